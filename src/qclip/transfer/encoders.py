"""`load_encoder`: a `DenseEncoder` (models/dense_encoder.py) from an encoder spec, for the dense heads.

An encoder spec is one of
  - a qclip model folder (`RUN/model`, open_clip_config.json inside), a pretrain run folder, or `local-dir:PATH`
  - an open_clip pretrained name `MODEL:TAG` (`ViT-B-16:datacomp_xl_s13b_b90k`)
  - a timm name with weights, `timm:NAME[.TAG]` (`timm:vit_base_patch16_224.mae`), or `timm:local-dir:PATH`
    (what `qclip export` writes)
  - `random:ARCH`: ARCH (qclip preset, open_clip config or timm name) with random weights, the baseline
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..models.dense_encoder import OPENAI_MEAN, OPENAI_STD, DenseEncoder


class EncoderError(ValueError):
    """An encoder spec that cannot be built here; the message says what to pass instead."""


def _timm_tower(name: str, pretrained: bool, image_size: int) -> nn.Module:
    import timm

    from ..models.factory import check_timm_model, parse_spec

    if parse_spec(name)[0] != "local-dir":
        check_timm_model(name)
    # the classifier/projection head stays (forward_intermediates never runs it) so exported heads load strictly
    try:
        return timm.create_model(name, pretrained=pretrained, img_size=image_size)
    except TypeError:  # towers without an img_size argument (conv/hybrid) take any size
        return timm.create_model(name, pretrained=pretrained)


def fit_position_embedding(visual: nn.Module, image_size: int) -> None:
    """An open_clip ViT pretrained at one size, transferred at another (224 -> 512 for ADE20k): its position
    embedding grid interpolated bicubically to the new grid, class token kept, as open_clip does when loading
    weights (`open_clip.model.resize_pos_embed`, reused here) and mmsegmentation's ViT does (`resize_pos_embed`).
    Other towers (timm: `img_size=` at creation; convolutional ones) are left as they are."""
    from types import SimpleNamespace

    from open_clip.model import resize_pos_embed

    grid, patch = getattr(visual, "grid_size", None), getattr(visual, "patch_size", None)
    pos = getattr(visual, "positional_embedding", None)
    if not image_size or grid is None or patch is None or not isinstance(pos, nn.Parameter):
        return
    new_grid = (image_size // patch[0], image_size // patch[1])
    if tuple(grid) == new_grid:
        return
    state = {"visual.positional_embedding": pos.data}
    resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=new_grid)))
    visual.positional_embedding = nn.Parameter(state["visual.positional_embedding"].to(pos.dtype),
                                               requires_grad=pos.requires_grad)
    visual.grid_size, visual.image_size = new_grid, (image_size, image_size)


def _mean_std(pp: dict) -> tuple[tuple, tuple]:
    return tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))


def load_encoder(spec: str, image_size: int, levels: int | list[int] = 4) -> DenseEncoder:
    """Build a DenseEncoder from a spec (see module docstring); fails with a message naming what to pass."""
    import timm

    from ..models import create_clip
    from ..models.factory import ModelError, parse_spec

    source, name = parse_spec(spec)
    path = Path(name if source == "local-dir" else spec)
    if (path / "model" / "open_clip_config.json").is_file():  # a pretrain run folder
        path = path / "model"
    try:
        if (path / "open_clip_config.json").is_file():
            b = create_clip(f"local-dir:{path}", trained=True)
            fit_position_embedding(b.model.visual, image_size)
            return DenseEncoder(b.model.visual, spec, str(path), image_size, levels, *_mean_std(b.preprocess_cfg))
        if source == "random":
            arch = name
            inner_source, inner = parse_spec(arch)
            if (inner_source == "timm" or timm.is_model(inner)) and not arch.startswith("qclip-"):
                tower = _timm_tower(inner, False, image_size)
                return DenseEncoder(tower, spec, arch, image_size, levels,
                                    *_mean_std(tower.pretrained_cfg))
            b = create_clip(arch, image_size=image_size if image_size else 0)
            return DenseEncoder(b.model.visual, spec, arch, image_size, levels, *_mean_std(b.preprocess_cfg))
        if source == "timm":
            tower = _timm_tower(name, True, image_size)
            return DenseEncoder(tower, spec, name, image_size, levels, *_mean_std(tower.pretrained_cfg))
        if ":" in spec and not path.exists():
            arch, tag = spec.split(":", 1)
            b = create_clip(arch, pretrained=tag)
            fit_position_embedding(b.model.visual, image_size)
            return DenseEncoder(b.model.visual, spec, arch, image_size, levels, *_mean_std(b.preprocess_cfg))
    except (ModelError, ValueError) as e:
        raise EncoderError(f"encoder '{spec}': {e}") from e
    except (OSError, RuntimeError) as e:
        if "connect" in str(e).lower() or "offline" in str(e).lower() or "hub" in str(e).lower() \
                or "huggingface" in str(e).lower():
            raise EncoderError(f"encoder '{spec}': its weights cannot be downloaded here ({type(e).__name__}); "
                               f"on an offline machine pass a local folder (qclip export / RUN/model)") from e
        raise
    raise EncoderError(f"encoder '{spec}' is not a model folder, MODEL:TAG, timm:NAME or random:ARCH "
                       f"(e.g. random:qclip-vit-tiny, timm:vit_base_patch16_224.mae, ViT-B-16:openai)")
