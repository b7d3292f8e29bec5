"""Captions: caption policies (and, next, captioners and the recaption job)."""
from .policy import CaptionPolicy, PolicyError

__all__ = ["CaptionPolicy", "PolicyError"]
