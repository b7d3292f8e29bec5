"""`DenseEncoder`: multi-level feature maps from any image tower, for the dense heads.

An encoder spec is one of
  - a qclip model folder (`RUN/model`, open_clip_config.json inside), a pretrain run folder, or `local-dir:PATH`
  - an open_clip pretrained name `MODEL:TAG` (`ViT-B-16:datacomp_xl_s13b_b90k`)
  - a timm name with weights, `timm:NAME[.TAG]` (`timm:vit_base_patch16_224.mae`), or `timm:local-dir:PATH`
    (what `qclip export` writes)
  - `random:ARCH`: ARCH (qclip preset, open_clip config or timm name) with random weights, the baseline
Features come from `forward_intermediates` (timm's API, also on open_clip's VisionTransformer): the last
`levels` blocks of a plain ViT (all at stride = patch size) or the stages of a hierarchical tower (FastViT/MCi,
strides 4..32), as NCHW maps, shallow to deep.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class EncoderError(ValueError):
    """An encoder spec that cannot be built here; the message says what to pass instead."""


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


def _timm_tower(name: str, pretrained: bool, image_size: int) -> nn.Module:
    import difflib

    import timm

    arch = name.split(".")[0]
    if not name.startswith("local-dir:") and not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        from ..models.factory import ModelError

        raise ModelError(f"unknown timm model '{arch}'; close matches: {', '.join(close) or 'none'} (timm.list_models())")
    # the classifier/projection head stays (forward_intermediates never runs it) so exported heads load strictly
    try:
        return timm.create_model(name, pretrained=pretrained, img_size=image_size)
    except TypeError:  # towers without an img_size argument (conv/hybrid) take any size
        return timm.create_model(name, pretrained=pretrained)


def _mean_std(pp: dict) -> tuple[tuple, tuple]:
    return tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))


def load_encoder(spec: str, image_size: int, levels: int = 4) -> DenseEncoder:
    """Build a DenseEncoder from a spec (see module docstring); fails with a message naming what to pass."""
    import timm

    from ..models import create_clip
    from ..models.factory import ModelError

    path = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec)
    if (path / "model" / "open_clip_config.json").is_file():  # a pretrain run folder
        path = path / "model"
    try:
        if (path / "open_clip_config.json").is_file():
            b = create_clip(f"local-dir:{path}")
            return DenseEncoder(b.model.visual, spec, str(path), image_size, levels, *_mean_std(b.preprocess_cfg))
        if spec.startswith("random:"):
            arch = spec[len("random:"):]
            if timm.is_model(arch.removeprefix("timm:")) and not arch.startswith("qclip-"):
                tower = _timm_tower(arch.removeprefix("timm:"), False, image_size)
                return DenseEncoder(tower, spec, arch, image_size, levels,
                                    *_mean_std(tower.pretrained_cfg))
            b = create_clip(arch, image_size=image_size if image_size else 0)
            return DenseEncoder(b.model.visual, spec, arch, image_size, levels, *_mean_std(b.preprocess_cfg))
        if spec.startswith("timm:"):
            name = spec[len("timm:"):]
            tower = _timm_tower(name, True, image_size)
            return DenseEncoder(tower, spec, name, image_size, levels, *_mean_std(tower.pretrained_cfg))
        if ":" in spec and not path.exists():
            arch, tag = spec.split(":", 1)
            b = create_clip(arch, pretrained=tag)
            return DenseEncoder(b.model.visual, spec, arch, image_size, levels, *_mean_std(b.preprocess_cfg))
    except ModelError as e:
        raise EncoderError(f"encoder '{spec}': {e}") from e
    except (OSError, RuntimeError) as e:
        if "connect" in str(e).lower() or "offline" in str(e).lower() or "hub" in str(e).lower() \
                or "huggingface" in str(e).lower():
            raise EncoderError(f"encoder '{spec}': its weights cannot be downloaded here ({type(e).__name__}); "
                               f"on an offline machine pass a local folder (qclip export / RUN/model)") from e
        raise
    raise EncoderError(f"encoder '{spec}' is not a model folder, MODEL:TAG, timm:NAME or random:ARCH "
                       f"(e.g. random:qclip-vit-tiny, timm:vit_base_patch16_224.mae, ViT-B-16:openai)")
