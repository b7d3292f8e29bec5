"""`qclip export`: the image tower of a CLIP model folder as a timm model folder.

Output (what timm's `local-dir:` / hf-hub loader reads): `config.json` {"architecture", "model_args",
"num_classes", "pretrained_cfg"} + `model.safetensors`, so

    timm.create_model("local-dir:OUT")

returns the image tower, its classifier head being CLIP's image projection (features = CLIP image embeddings
before normalisation). ViT towers are converted from open_clip's layout with timm's own OpenAI-CLIP
converter; timm towers are copied as they are.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_write_json
from ..provenance import take_output_folder
from .checkpoint import MODEL_WEIGHTS, load_weights, read_model_config, save_weights


def timm_tower(model_cfg: dict, weights: dict[str, torch.Tensor]) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(timm architecture, model_args, timm state dict) for the image tower of an open_clip model."""
    vc = model_cfg["vision_cfg"]
    embed_dim = model_cfg["embed_dim"]
    if "timm_model_name" in vc:
        if vc.get("timm_proj") not in (None, "none"):
            raise ValueError("export supports timm towers whose projection is the timm head (timm_proj: null)")
        sd = {k[len("visual.trunk."):]: v for k, v in weights.items() if k.startswith("visual.trunk.")}
        return vc["timm_model_name"].split(".")[0], {"num_classes": embed_dim}, sd
    if "layers" not in vc or isinstance(vc["layers"], (list, tuple)):
        raise ValueError("export supports ViT and timm image towers (not ModifiedResNet)")
    from timm.models.vision_transformer import _convert_openai_clip

    width = vc["width"]
    head_width = vc.get("head_width", 64)
    model_args = {
        "img_size": vc["image_size"], "patch_size": vc["patch_size"], "embed_dim": width, "depth": vc["layers"],
        "num_heads": width // head_width, "mlp_ratio": vc.get("mlp_ratio", 4.0), "pre_norm": True,
        "class_token": True, "global_pool": "token", "num_classes": embed_dim, "norm_layer_eps": 1e-5,
    }
    sd = _convert_openai_clip(weights, None, prefix="visual.")
    return "vit_base_patch16_224", model_args, sd


def export_image_tower(model_dir: str | Path, out: str | Path) -> Path:
    model_dir, out = Path(model_dir), Path(out)
    cfg = read_model_config(model_dir)
    arch, model_args, sd = timm_tower(cfg["model_cfg"], load_weights(model_dir / MODEL_WEIGHTS))
    eps = model_args.pop("norm_layer_eps", None)
    pp = cfg.get("preprocess_cfg", {})
    size = cfg["model_cfg"]["vision_cfg"].get("image_size", 224)
    take_output_folder(out, "export")
    save_weights(sd, out / "model.safetensors")
    atomic_write_json(out / "config.json", {
        "architecture": arch,
        "num_classes": model_args.pop("num_classes"),
        "model_args": model_args,
        "qclip": {"norm_eps": eps, "source": str(model_dir)},
        "pretrained_cfg": {"input_size": [3, size, size], "mean": pp.get("mean"), "std": pp.get("std"),
                           "interpolation": pp.get("interpolation", "bicubic"), "crop_pct": 1.0},
    })
    return out


def create_timm_from_export(path: str | Path, **kwargs) -> torch.nn.Module:
    """timm.create_model on an export, applying the LayerNorm epsilon open_clip ViTs use (1e-5)."""
    import json
    from functools import partial

    import timm

    cfg = json.loads((Path(path) / "config.json").read_text())
    eps = (cfg.get("qclip") or {}).get("norm_eps")
    if eps is not None:
        kwargs.setdefault("norm_layer", partial(torch.nn.LayerNorm, eps=eps))
    return timm.create_model(f"local-dir:{path}", pretrained=True, **kwargs)
