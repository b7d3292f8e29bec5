"""Dense losses: cross-entropy with ignore index (segmentation); SILog or L1 on log depth over valid pixels."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.dense import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


def depth_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "silog", min_depth: float = 1e-3,
               variance_focus: float = 0.85) -> torch.Tensor:
    """SILog as BTS (Lee et al.): sqrt(mean(d^2) - lambda * mean(d)^2), d = log pred - log gt, lambda 0.85."""
    valid = target > min_depth
    if not valid.any():
        return pred.sum() * 0.0
    d = pred[valid].clamp(min=min_depth).log() - target[valid].log()
    if kind == "l1log":
        return d.abs().mean()
    return (d.pow(2).mean() - variance_focus * d.mean().pow(2)).clamp(min=1e-8).sqrt()
