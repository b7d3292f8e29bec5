"""CLIP models from open_clip's factory: open_clip configs, any timm image tower, and tiny CPU presets.

Importing this package registers qclip's presets (`configs/*.json`) with open_clip and its tiny towers with
timm, so `open_clip.create_model_and_transforms("qclip-vit-tiny")` works after `import qclip.models`.
"""
from .factory import ClipBundle, ModelError, create_clip, list_presets, resolve_model_cfg

__all__ = ["ClipBundle", "ModelError", "create_clip", "list_presets", "resolve_model_cfg"]
