"""`DenseEncoder`: multi-level feature maps (NCHW, shallow to deep) from any image tower, through
`forward_intermediates` (timm's API, also on open_clip's VisionTransformer): the last `levels` blocks of a plain
ViT (all at stride = patch size) or the stages of a hierarchical tower (FastViT/MCi, strides 4..32). Dense
transfer reads it, and so do baselines that need a tower's feature maps (SimMIM); building one from a spec is
`qclip.transfer.encoders.load_encoder`.
"""
from __future__ import annotations

import re
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
    def __init__(self, tower: nn.Module, spec: str, arch: str, image_size: int, levels: int | list[int] = 4,
                 mean: tuple = OPENAI_MEAN, std: tuple = OPENAI_STD) -> None:
        """levels: the last `levels` blocks (stages), or a list of block indices (mmseg's out_indices)."""
        super().__init__()
        self.tower, self.levels = tower, levels
        self._open_clip = not hasattr(tower, "default_cfg") and not hasattr(tower, "pretrained_cfg")
        was_training = tower.training
        tower.eval()
        try:
            with torch.no_grad():
                feats = self(torch.zeros(1, 3, image_size, image_size))
        except AssertionError as e:  # timm / open_clip check the indices with an assert
            raise ValueError(f"{arch} has no levels {levels} ({e}): lower transfer.levels or choose "
                             f"transfer.level_indices among its blocks") from e
        tower.train(was_training)
        self.info = EncoderInfo(spec, arch, [f.shape[1] for f in feats], [image_size // f.shape[-1] for f in feats],
                                len({f.shape[-1] for f in feats}) == 1, tuple(mean), tuple(std))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._open_clip:  # open_clip VisionTransformer / TimmModel: dict output
            out = self.tower.forward_intermediates(x, indices=self.levels, intermediates_only=True)
            return list(out["image_intermediates"])
        return list(self.tower.forward_intermediates(x, indices=self.levels, intermediates_only=True))

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer grouping of the tower (stem first, then blocks in depth order; what is left, such as a
        final norm or projection, groups with the head), for layer-wise lr decay: a timm tower's own matcher
        (an open_clip TimmModel's trunk's), or for open_clip's VisionTransformer the stem (class and position
        embeddings, patch conv, ln_pre) and its residual blocks, as mmsegmentation groups a ViT."""
        tower = self.tower
        if hasattr(tower, "group_matcher"):
            return prefix_group_matcher(tower.group_matcher(coarse=coarse), "tower.")
        if hasattr(getattr(tower, "trunk", None), "group_matcher"):
            return prefix_group_matcher(tower.trunk.group_matcher(coarse=coarse), "tower.trunk.")
        if hasattr(tower, "transformer") and hasattr(tower, "conv1"):
            return prefix_group_matcher({"stem": r"^(?:class_embedding|positional_embedding|conv1|ln_pre)",
                                         "blocks": r"^transformer\.resblocks\.(\d+)"}, "tower.")
        raise ValueError(f"no layer grouping known for {type(tower).__name__}: use transfer.layer_decay=1")


def prefix_group_matcher(matcher: dict, prefix: str) -> dict:
    """A timm group matcher (dict of regexes, or of [(regex, suffix)] lists) for the same module held under
    `prefix`. Every alternative of a pattern is anchored at the prefix (timm's `^a|b|c` leaves b and c unanchored,
    which `re.match` anchors at the name's start)."""
    def fix(pattern: str) -> str:
        body = pattern[1:] if pattern.startswith("^") else pattern
        return f"^{re.escape(prefix)}(?:{body.replace('|^', '|')})"

    out: dict = {}
    for name, spec in matcher.items():
        if spec is None:
            out[name] = None
        elif isinstance(spec, (list, tuple)):
            out[name] = [(fix(p), suffix) for p, suffix in spec]
        else:
            out[name] = fix(spec)
    return out
