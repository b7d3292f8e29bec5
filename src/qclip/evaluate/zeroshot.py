"""Zero-shot classification from class-name prompts, for any CLIP model open_clip can build.

The classifier is open_clip's `build_zero_shot_classifier` (mean of normalised prompt embeddings per class,
OpenAI's templates by default). Labelled images come from
  - an ImageFolder layout (`ROOT/<class name>/*.jpg`; `_` in folder names reads as a space), or
  - a world dataset: the label is the shape that covers the most pixels of the image (its segmentation mask),
    prompts "a photo of a cube." etc. (4 classes; the colour is not in the mask, so it is not in the label).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

from ..data.images import BadImage, open_image
from ..data.shards import ShardReader, is_dataset
from ..data.skips import SkipCounter
from ..data.world import SHAPES, STUFF_CLASSES, seg_classes
from ..data.world_shards import world_shapes
from ..models import ClipBundle

_IMG_EXT = (".jpg", ".jpeg", ".png", ".webp")


def world_label(seg: np.ndarray, shapes: tuple[str, ...] = SHAPES) -> int | None:
    """Index into the world's `shapes` of the shape with the most pixels; None if no object is visible."""
    n = len(seg_classes(shapes))
    counts = np.bincount(seg[seg < n].ravel(), minlength=n)[len(STUFF_CLASSES):]
    return int(counts.argmax()) if counts.sum() else None


def labelled_images(data: str | Path, max_samples: int = 0,
                    skips: SkipCounter | None = None) -> tuple[list[str], list[Image.Image], list[int]]:
    """(class names, images, labels) from a world dataset or an ImageFolder layout."""
    data, images, labels = Path(data), [], []
    if is_dataset(data):
        classes = list(world_shapes(data))
        for s in ShardReader(data):
            if s.seg is None:
                raise ValueError(f"{data}: sample {s.key} has no mask to label it; use the world's dense or val split "
                                 f"or an ImageFolder layout")
            y = world_label(s.seg, tuple(classes))
            if y is not None:
                images.append(s.pil())
                labels.append(y)
            if max_samples and len(labels) >= max_samples:
                break
        return classes, images, labels
    dirs = sorted(d for d in data.iterdir() if d.is_dir()) if data.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"'{data}' is neither a qclip dataset nor an ImageFolder layout (ROOT/<class>/*.jpg)")
    classes = [d.name.replace("_", " ") for d in dirs]
    for y, d in enumerate(dirs):
        for f in sorted(p for p in d.iterdir() if p.suffix.lower() in _IMG_EXT):
            try:
                images.append(open_image(f.read_bytes()))
                labels.append(y)
            except BadImage as e:
                if skips is not None:
                    skips.skip(e.reason, str(f))
    return classes, images, labels


@torch.no_grad()
def zero_shot_classification(bundle: ClipBundle, data: str | Path, templates: str = "openai", max_samples: int = 0,
                             batch_size: int = 256, device: str = "cpu") -> dict:
    """Top-1 / top-5 accuracy (top-5 only with more than 5 classes) and per-class accuracy."""
    model = bundle.model.to(device).eval()
    skips = SkipCounter()
    classes, images, labels = labelled_images(data, max_samples, skips)
    if not labels:
        raise ValueError(f"{data}: no labelled images")
    tmpl = OPENAI_IMAGENET_TEMPLATES if templates == "openai" else SIMPLE_IMAGENET_TEMPLATES
    classifier = open_clip.build_zero_shot_classifier(model, bundle.tokenizer, classes, tmpl, device=device)
    logits = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([bundle.preprocess_val(im) for im in images[i:i + batch_size]]).to(device)
        logits.append(F.normalize(model.encode_image(x).float(), dim=-1) @ classifier.float())
    logits = torch.cat(logits)
    y = torch.tensor(labels)
    top = logits.topk(min(5, len(classes)), dim=1).indices
    per_class = [float((top[y == c, 0] == c).float().mean()) if (y == c).any() else None
                 for c in range(len(classes))]
    out = {"n": len(labels), "classes": classes, "top1": float((top[:, 0] == y).float().mean()),
           "chance_top1": float(np.bincount(labels).max() / len(labels)), "per_class_top1": per_class,
           "templates": len(tmpl), "skipped": skips.as_dict()}
    if len(classes) > 5:
        out["top5"] = float((top == y[:, None]).any(1).float().mean())
    return out
