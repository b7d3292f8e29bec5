"""`DenseEncoder`: multi-level feature maps (NCHW, shallow to deep) from any image tower, through
`forward_intermediates` (timm's API, also on open_clip's VisionTransformer): the last `levels` blocks of a plain
ViT (all at stride = patch size) or the stages of a hierarchical tower (FastViT/MCi, strides 4..32). Dense
transfer reads it, and so do baselines that need a tower's feature maps (SimMIM); building one from a spec is
`qclip.transfer.encoders.load_encoder`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass
class EncoderInfo:
    spec: str
    arch: str
    channels: list[int]
    reductions: list[int]  # stride of each level w.r.t. the input
    plain: bool  # all levels at one stride (plain ViT): the heads build a simple pyramid
    mean: tuple[float, ...]
    std: tuple[float, ...]


class DenseEncoder(nn.Module):
    def __init__(self, tower: nn.Module, spec: str, arch: str, image_size: int, levels: int = 4,
                 mean: tuple = OPENAI_MEAN, std: tuple = OPENAI_STD) -> None:
        super().__init__()
        self.tower, self.levels = tower, levels
        self._open_clip = not hasattr(tower, "default_cfg") and not hasattr(tower, "pretrained_cfg")
        was_training = tower.training
        tower.eval()
        with torch.no_grad():
            feats = self(torch.zeros(1, 3, image_size, image_size))
        tower.train(was_training)
        self.info = EncoderInfo(spec, arch, [f.shape[1] for f in feats], [image_size // f.shape[-1] for f in feats],
                                len({f.shape[-1] for f in feats}) == 1, tuple(mean), tuple(std))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._open_clip:  # open_clip VisionTransformer / TimmModel: dict output
            out = self.tower.forward_intermediates(x, indices=self.levels, intermediates_only=True)
            return list(out["image_intermediates"])
        return list(self.tower.forward_intermediates(x, indices=self.levels, intermediates_only=True))
