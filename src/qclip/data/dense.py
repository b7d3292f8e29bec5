"""Dense-prediction datasets the transfer stage reads: ADE20k, Pascal VOC, NYUv2-style depth, folder pairs,
and qclip datasets carrying `seg.png` / `depth.npy` (the embedded world's `dense` and `val` splits).

Conventions (as mmsegmentation): segmentation targets are int64 class ids with 255 = ignore; depth targets
are float32 metres with 0 = invalid. Opening a dataset scans it once: pairs with a missing or unreadable
file, a mask whose size differs from its image, or class ids outside the label set are skipped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .images import BadImage, open_image
from .shards import ShardReader, is_dataset
from .skips import SkipCounter

IGNORE_INDEX = 255
LAYOUTS = ("ade20k", "voc", "nyu", "folder", "qclip")
_IMG_EXT = (".jpg", ".jpeg", ".png", ".webp")


class DenseDataError(ValueError):
    """A dense dataset folder that does not match its layout; names what is missing."""


@dataclass
class DensePair:
    key: str
    image: Any  # path or encoded bytes
    target: Any  # path, encoded bytes, or a decoded array (qclip shards)


def _read_image(src: Any) -> Image.Image:
    data = Path(src).read_bytes() if isinstance(src, (str, Path)) else src
    return open_image(data)


def _read_array(src: Any) -> np.ndarray:
    if isinstance(src, np.ndarray):
        return src
    if str(src).endswith(".npy"):
        return np.load(src, allow_pickle=False)
    with Image.open(src) as im:
        return np.asarray(im)


class DenseDataset(Dataset):
    """`ds[i] -> {"key", "image": PIL RGB, "seg": int64 HxW | "depth": float32 HxW}`."""

    def __init__(self, pairs: list[DensePair], task: str, num_classes: int | None = None,
                 reduce_zero_label: bool = False, depth_scale: float = 1000.0, max_depth: float = 10.0,
                 name: str = "", verify: bool = True, max_bad_fraction: float = 0.05,
                 class_names: list[str] | None = None, stuff_classes: list[str] | None = None) -> None:
        """class_names: one per class id, where the dataset knows them; stuff_classes: those of them that are
        background (the world's floor and wall), left out of the object-class mIoU."""
        if task not in ("segmentation", "depth"):
            raise ValueError(f"task must be 'segmentation' or 'depth', got '{task}'")
        self.task, self.num_classes, self.reduce_zero_label = task, num_classes, reduce_zero_label
        self.depth_scale, self.max_depth, self.name = depth_scale, max_depth, name
        self.class_names, self.stuff_classes = class_names, list(stuff_classes or [])
        self.skips = SkipCounter()
        self.pairs = [p for p in pairs if self._check(p)] if verify else pairs
        if not self.pairs:
            raise DenseDataError(f"{name}: no usable {task} pairs ({self.skips.summary('kept', 0, len(pairs))}):\n"
                                 f"{self.skips.details()}")
        self.seen = len(pairs)
        self.skips.check_fraction(self.seen, max_bad_fraction, f"dense dataset {name}")

    def _check(self, p: DensePair) -> bool:
        try:
            img = _read_image(p.image)
            target = self._target(p)
        except FileNotFoundError:
            self.skips.skip("missing file", p.key)
            return False
        except (BadImage, OSError, ValueError) as e:
            self.skips.skip(getattr(e, "reason", "unreadable target"),
                            f"{p.key} ({p.target})" if isinstance(p.target, (str, Path)) else p.key)
            return False
        if target.shape[:2] != (img.height, img.width):
            self.skips.skip("mask size mismatch", f"{p.key} ({target.shape[1]}x{target.shape[0]} vs "
                            f"{img.width}x{img.height})")
            return False
        if self.task == "segmentation" and self.num_classes is not None:
            valid = target[target != IGNORE_INDEX]
            if valid.size and (valid.min() < 0 or valid.max() >= self.num_classes):
                self.skips.skip("class id out of range", f"{p.key} (max {valid.max()}, {self.num_classes} classes)")
                return False
        if self.task == "depth" and not (target > 0).any():
            self.skips.skip("no valid depth", p.key)
            return False
        return True

    def _target(self, p: DensePair) -> np.ndarray:
        arr = _read_array(p.target)
        if self.task == "segmentation":
            if arr.ndim != 2:
                e = ValueError(f"{p.key}: a mask must be single-channel, got shape {arr.shape}")
                e.reason = ("mask not single-channel (a colour picture of the classes? masks hold one class id "
                            "per pixel: a one-channel PNG, as ADE20k's annotations)")
                raise e
            seg = arr.astype(np.int64)
            if self.reduce_zero_label:  # ADE20k: 0 = "other" -> ignore, classes 1..150 -> 0..149
                seg = np.where(seg == 0, IGNORE_INDEX, seg - 1)
                seg[seg == IGNORE_INDEX - 1] = IGNORE_INDEX
            return seg
        depth = arr.astype(np.float32)
        if depth.ndim == 3:
            depth = depth[..., 0]
        if depth.ndim != 2:
            e = ValueError(f"{p.key}: a depth map must be 2-d (H x W), got shape {arr.shape}")
            e.reason = "depth map not 2-d (save an H x W array, metres or millimetres)"
            raise e
        if np.issubdtype(arr.dtype, np.integer):
            depth = depth / self.depth_scale
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        return np.minimum(depth, self.max_depth)

    def __len__(self) -> int:
        return len(self.pairs)

    def target(self, i: int) -> np.ndarray:
        """The target of pair `i` alone (no image decode)."""
        return self._target(self.pairs[i])

    def __getitem__(self, i: int) -> dict:
        p = self.pairs[i]
        return {"key": p.key, "image": _read_image(p.image), self.task if self.task == "depth" else "seg": self._target(p)}

    def summary(self) -> str:
        return self.skips.summary(f"{self.name}: kept", len(self.pairs), self.seen)


def _stems(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*")) if p.suffix.lower() in exts}


def _match(images: Path, targets: Path, target_exts: tuple[str, ...], key_prefix: str) -> list[DensePair]:
    for d in (images, targets):
        if not d.is_dir():
            raise DenseDataError(f"expected folder '{d}' is missing")
    imgs, tgts = _stems(images, _IMG_EXT), _stems(targets, target_exts)
    # an image without a target stays in the list so the scan counts it as a missing file
    return [DensePair(f"{key_prefix}{s}", imgs[s], tgts.get(s, targets / f"{s}{target_exts[0]}")) for s in imgs]


def open_dense(root: str | Path, layout: str, task: str, split: str = "train", **kw: Any) -> DenseDataset:
    """Open a dense dataset.

    ade20k: images/{training,validation}/*.jpg + annotations/{...}/*.png, 150 classes, reduce_zero_label
    voc:    JPEGImages/, SegmentationClass/ (palette PNG, 255 = boundary), ImageSets/Segmentation/{split}.txt
    nyu:    {split}/**/rgb_N.jpg|png + sync_depth_N.png or depth_N.png (uint16 millimetres)
    folder: {split}/images/* + {split}/masks/* (segmentation) or {split}/depth/* (depth), matched by stem
    qclip:  a qclip dataset directory whose samples carry seg.png / depth.npy (e.g. the world's dense, val)
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise DenseDataError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if not root.exists():
        raise DenseDataError(f"dense dataset folder '{root}' does not exist")
    name = f"{layout}:{root.name}/{split}"
    if layout == "ade20k":
        sub = {"train": "training", "val": "validation"}.get(split, split)
        pairs = _match(root / "images" / sub, root / "annotations" / sub, (".png",), "")
        kw = {"num_classes": 150, "reduce_zero_label": True, **kw}
        return DenseDataset(pairs, "segmentation", name=name, **kw)
    if layout == "voc":
        ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not ids_file.is_file():
            raise DenseDataError(f"VOC split list '{ids_file}' is missing")
        ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        pairs = [DensePair(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
        kw = {"num_classes": 21, **kw}
        return DenseDataset(pairs, "segmentation", name=name, **kw)
    if layout == "nyu":
        base = root / split if (root / split).is_dir() else root
        pairs = []
        for rgb in sorted(p for p in base.rglob("rgb_*") if p.suffix.lower() in _IMG_EXT):
            n = rgb.stem[len("rgb_"):]
            cands = [rgb.with_name(f"sync_depth_{n}.png"), rgb.with_name(f"depth_{n}.png")]
            depth = next((c for c in cands if c.exists()), cands[0])
            pairs.append(DensePair(str(rgb.relative_to(root)), rgb, depth))
        if not pairs:
            raise DenseDataError(f"{base}: no rgb_*.jpg|png files found (NYUv2 layout, as BTS/Eigen splits)")
        return DenseDataset(pairs, "depth", name=name, **kw)
    if layout == "folder":
        sub = "masks" if task == "segmentation" else "depth"
        exts = (".png",) if task == "segmentation" else (".png", ".npy")
        pairs = _match(root / split / "images", root / split / sub, exts, "")
        return DenseDataset(pairs, task, name=name, **kw)
    # qclip dataset (shards); `split` names a sub-dataset when root holds several (the world)
    ds_dir = root / split if is_dataset(root / split) else root
    if not is_dataset(ds_dir):
        raise DenseDataError(f"'{root}' is not a qclip dataset (no manifest.json) nor holds '{split}'")
    reader = ShardReader(ds_dir)
    pairs = []
    field = "seg" if task == "segmentation" else "depth"
    for s in reader:
        target = getattr(s, field)
        if target is None:
            raise DenseDataError(f"{ds_dir}: sample {s.key} has no {field} (use the world's dense or val split)")
        pairs.append(DensePair(s.key, s.image, target))
    names = reader.manifest.get("seg_classes") or None
    seg_kw = {"num_classes": len(names) if names else None, "class_names": names,
              "stuff_classes": reader.manifest.get("stuff_classes")}
    asked = kw.pop("num_classes", None)
    if task == "segmentation" and asked and names and asked != len(names):
        raise DenseDataError(f"transfer.num_classes={asked}, but {ds_dir}/manifest.json names {len(names)} classes "
                             f"({', '.join(names[:4])}, ...): set transfer.num_classes={len(names)} or leave it 0 "
                             f"(the dataset's own)")
    if task == "segmentation" and asked and not names:
        seg_kw["num_classes"] = asked
    return DenseDataset(pairs, task, name=name, **(seg_kw if task == "segmentation" else {}), **kw)
