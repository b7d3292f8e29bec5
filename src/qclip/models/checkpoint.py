"""Checkpoint I/O. Weights are safetensors; anything else loads only with `torch.load(weights_only=True)`,
so a pickle carrying code is refused, never executed.

A model directory (`RUN/model/`) is what open_clip's `local-dir:` schema reads:
  open_clip_config.json        {"model_cfg", "preprocess_cfg"}
  open_clip_model.safetensors  the weights
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ..atomic import atomic_write_bytes, atomic_write_json

MODEL_WEIGHTS = "open_clip_model.safetensors"
MODEL_CONFIG = "open_clip_config.json"
MODEL_VOCAB = "vocab.json"  # a word vocabulary (the in-repo captioner) in place of open_clip's BPE tokenizer


class UnsafeCheckpoint(ValueError):
    """A checkpoint that could only be loaded by running code stored in it."""


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared storage; contiguous clones are cheap at the sizes we save often
    return save({k: v.detach().contiguous().clone() for k, v in state.items()})


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    atomic_write_bytes(path, state_dict_bytes(state))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"refusing to load '{path}': it is a pickle that needs code to load ({str(e).splitlines()[0][:160]}). "
            f"qclip loads only safetensors or plain tensor pickles; convert it where you trust it, e.g. "
            f"safetensors.torch.save_file(torch.load(path, weights_only=False)['state_dict'], 'x.safetensors')"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnsafeCheckpoint(f"'{path}' does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def save_model_dir(model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, out: str | Path,
                   qclip_cfg: dict | None = None) -> Path:
    """Write an open_clip `local-dir:` model folder (weights first, config last: the config marks it complete).
    `qclip_cfg` holds what open_clip's config cannot say (e.g. {"vision_stem": "conv"}); open_clip ignores it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(unwrap(model).state_dict(), out / MODEL_WEIGHTS)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    if qclip_cfg:
        cfg["qclip"] = qclip_cfg
    atomic_write_json(out / MODEL_CONFIG, cfg)
    return out


def read_model_config(model_dir: str | Path) -> dict:
    """A model folder's open_clip_config.json; ValueError naming the file when it is cut short."""
    f = Path(model_dir) / MODEL_CONFIG
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{f} is cut short or not JSON ({e}); re-export or re-train the model") from None


def weights_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights (names, shapes, dtypes, values): two loads of the same weights agree,
    a retrained model does not. Resumable jobs keep earlier output only when it matches."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(unwrap(model).state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors (a logit scale) cannot be viewed as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def torch_save_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
