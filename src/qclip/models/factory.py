"""One entry point, `create_clip`, over open_clip's `create_model_and_transforms`.

A model spec is one of
  - an open_clip config name: `ViT-B-16`, `MobileCLIP-S2`, ... or a qclip preset: `qclip-vit-tiny`, `qclip-mci-tiny`
  - a timm image tower: `timm:fastvit_mci2`, `timm:vit_base_patch16_224` (or the bare timm name), paired with the
    text tower of `text_tower` (an open_clip config name; ViT-B-16's by default)
  - `local-dir:PATH`: a folder with open_clip_config.json (+ weights), as qclip writes for every checkpoint
"""
from __future__ import annotations

import copy
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import timm
import torch

from . import timm_towers  # noqa: F401  (registers qclip's timm towers)
from .checkpoint import MODEL_CONFIG, MODEL_VOCAB, MODEL_WEIGHTS, load_weights
from .vision_stem import apply_vision_stem

PRESET_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(PRESET_DIR)


class ModelError(ValueError):
    """A model spec that names nothing buildable; the message lists close matches."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


SPEC_SOURCES = ("local-dir", "timm", "random", "hf", "coca")


def parse_spec(spec: str) -> tuple[str, str]:
    """(source, name) of a model spec, as timm's parse_model_name: `local-dir:PATH`, `timm:NAME[.TAG]`,
    `random:ARCH`, `hf:NAME_OR_DIR`, `coca:NAME`; anything else is ("", spec) (an open_clip or preset name,
    or NAME:TAG for open_clip pretrained weights). The one place a spec's prefix is read."""
    source, sep, rest = spec.partition(":")
    if sep and source in SPEC_SOURCES:
        return source, rest
    return "", spec


def model_spec(arg: str) -> str:
    """A folder qclip wrote (open_clip_config.json inside) becomes `local-dir:PATH`; names pass through."""
    return f"local-dir:{arg}" if Path(arg, "open_clip_config.json").is_file() else arg


def check_timm_model(name: str) -> None:
    """The one unknown-model error: a timm architecture that does not exist, with close matches."""
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise ModelError(f"unknown timm model '{arch}'; close matches: {', '.join(close) or 'none'} "
                         f"(timm.list_models())")


def _timm_name(spec: str) -> str | None:
    source, name = parse_spec(spec)
    if source == "timm":
        return name
    if not source and open_clip.get_model_config(spec) is None and timm.is_model(spec.split(".")[0]):
        return spec
    return None


def resolve_model_cfg(spec: str, text_tower: str = "", image_size: int = 0) -> tuple[str, dict]:
    """(open_clip base name, full model config) for a spec; raises ModelError naming close matches."""
    if parse_spec(spec)[0] == "local-dir":
        folder = Path(parse_spec(spec)[1])
        try:
            cfg = json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8"))["model_cfg"]
            if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict):
                raise KeyError("vision_cfg")
        except FileNotFoundError:
            raise ModelError(f"model folder '{folder}' has no {MODEL_CONFIG}: not a qclip / open_clip model "
                             f"folder") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"model folder '{folder}': {MODEL_CONFIG} is cut short or not an open_clip model "
                             f"config ({type(e).__name__}: {e}); re-export or re-train the model") from None
        timm_name = cfg["vision_cfg"].get("timm_model_name")
        if timm_name:  # a timm tower the config names: known to this timm (else open_clip's RuntimeError)
            check_timm_model(timm_name)
        return spec, open_clip.get_model_config(spec)
    timm_name = _timm_name(spec)
    if timm_name is not None:
        check_timm_model(timm_name)
        base = text_tower or "ViT-B-16"
        base_cfg = open_clip.get_model_config(base)
        if base_cfg is None:
            raise ModelError(f"unknown text tower config '{base}'; see open_clip.list_models()")
        cfg = {
            "embed_dim": base_cfg["embed_dim"],
            # as open_clip's MobileCLIP configs: timm's own classifier head, sized to embed_dim, is the projection
            "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": False, "timm_pool": "avg",
                           "timm_proj": None, "image_size": image_size or 224},
            "text_cfg": copy.deepcopy(base_cfg["text_cfg"]),
        }
        if base_cfg.get("custom_text"):
            cfg["custom_text"] = True
        return base, cfg
    cfg = open_clip.get_model_config(spec)
    if cfg is None:
        close = difflib.get_close_matches(spec, open_clip.list_models(), n=5)
        raise ModelError(
            f"unknown model '{spec}': not an open_clip config ({', '.join(close) or 'no close match'}) nor a timm "
            f"model; use an open_clip name, a qclip preset ({', '.join(list_presets())}) or timm:<name>"
        )
    cfg = copy.deepcopy(cfg)
    if image_size:
        cfg["vision_cfg"]["image_size"] = image_size
    return spec, cfg


def _has_weights(spec: str) -> bool:
    d = Path(parse_spec(spec)[1])
    return any(d.glob("*.safetensors")) or any(d.glob("*.bin")) or any(d.glob("*.pth"))


def _init_coca_decoder(decoder: torch.nn.Module) -> None:
    """open_clip 3.3.0 leaves CoCa's `text_decoder.text_projection` as torch.empty (its init_parameters is never
    called): from-scratch CoCa models start with whatever was in memory, up to 1e22. Initialise it as open_clip
    initialises the text tower's projection."""
    with torch.no_grad():
        decoder.text_projection.normal_(std=decoder.width ** -0.5)


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    model_cfg: dict  # what open_clip built, for open_clip_config.json
    preprocess_cfg: dict
    qclip_cfg: dict = field(default_factory=dict)  # beyond open_clip's config: {"vision_stem": "conv"}


def _qclip_cfg(spec: str) -> dict:
    if parse_spec(spec)[0] != "local-dir":
        return {}
    f = Path(parse_spec(spec)[1]) / MODEL_CONFIG
    return json.loads(f.read_text(encoding="utf-8")).get("qclip", {}) if f.is_file() else {}


def require_weights(spec: str) -> None:
    """A trained model is asked for (evaluation, transfer, export, scoring): a `local-dir:` folder without its
    weights file is an error, not a random tower (open_clip builds one from the config alone, silently)."""
    if parse_spec(spec)[0] == "local-dir" and not _has_weights(spec):
        folder = parse_spec(spec)[1]
        raise ModelError(f"model folder '{folder}' holds {MODEL_CONFIG} but no weights ({MODEL_WEIGHTS}): it was "
                         f"deleted or never written. Re-run the training that made it (qclip pretrain --out ... "
                         f"resumes), or pass random:ARCH for a random tower on purpose")


def create_clip(spec: str, text_tower: str = "", image_size: int = 0, pretrained: str | None = None,
                device: str | torch.device = "cpu", trained: bool = False, **model_kwargs: Any) -> ClipBundle:
    """Build a CLIP model, its train/val transforms and tokenizer through open_clip's factory.
    `trained`: the caller needs trained weights (see `require_weights`); a folder holding only a config is then
    refused instead of built at random."""
    if trained and not pretrained:
        require_weights(spec)
    base, cfg = resolve_model_cfg(spec, text_tower, image_size)
    qclip_cfg = _qclip_cfg(spec)
    stem = qclip_cfg.get("vision_stem", "patch")
    kwargs: dict[str, Any] = {}
    if base != spec or image_size:  # override the registered config with the resolved one
        kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    kwargs.update(model_kwargs)
    if stem != "patch":  # open_clip cannot build the stem: build, swap it in, then load the folder's weights
        kwargs["load_weights"] = False
    root = logging.getLogger()
    level = root.level
    if not pretrained:
        root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights" for every from-scratch model
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            base, pretrained=pretrained or None, device=device, **kwargs)
    finally:
        root.setLevel(level)
    if stem != "patch":
        apply_vision_stem(model.visual, stem)
        if _has_weights(spec):
            model.load_state_dict(load_weights(Path(parse_spec(spec)[1]) / MODEL_WEIGHTS))
        model.to(device)
    decoder = getattr(model, "text_decoder", None)
    from_scratch = not pretrained and not (parse_spec(spec)[0] == "local-dir" and _has_weights(spec))
    if decoder is not None and from_scratch:
        _init_coca_decoder(decoder)
    vocab = Path(parse_spec(spec)[1]) / MODEL_VOCAB if parse_spec(spec)[0] == "local-dir" else None
    if vocab is not None and vocab.is_file():  # the folder's own word vocabulary: its ids are the model's
        from .vocab import WordTokenizer

        tokenizer: Callable = WordTokenizer.load(vocab)
    else:
        tokenizer = open_clip.get_tokenizer(base, context_length=cfg["text_cfg"].get("context_length", 77))
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    preprocess_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()}
    # the folder's config must rebuild this model: SigLIP's logit bias is a parameter only when the config asks
    # for one (open_clip's SigLIP configs carry "init_logit_bias"), else its weights cannot be loaded back
    inits = {k: model_kwargs[k] for k in ("init_logit_scale", "init_logit_bias") if k in model_kwargs}
    return ClipBundle(model, pre_train, pre_val, tokenizer, {**cfg, **inits}, preprocess_cfg, qclip_cfg)
