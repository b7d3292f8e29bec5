"""Dense datasets as tensors for the transfer loop: layout detection, default splits, resize + normalise."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..data.dense import IGNORE_INDEX, DenseDataError, DenseDataset, open_dense
from ..data.shards import is_dataset
from .augment import train_transform

DEFAULT_SPLITS = {"qclip": ("dense", "val"), "ade20k": ("train", "val"), "voc": ("train", "val"),
                  "nyu": ("train", "test"), "folder": ("train", "val")}


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    if not root.exists():
        raise DenseDataError(f"dense dataset folder '{root}' does not exist")
    if is_dataset(root) or any(is_dataset(d) for d in root.iterdir() if d.is_dir()):
        return "qclip"
    if (root / "images" / "training").is_dir() and (root / "annotations").is_dir():
        return "ade20k"
    if (root / "JPEGImages").is_dir():
        return "voc"
    if next(root.rglob("rgb_*"), None) is not None:
        return "nyu"
    if any((root / s / "images").is_dir() for s in ("train", "val")):
        return "folder"
    raise DenseDataError(f"cannot tell the layout of '{root}': expected a qclip dataset, ADE20k (images/training), "
                         f"VOC (JPEGImages/), NYUv2 (rgb_*.png) or folder (train/images); pass transfer.layout")


def open_splits(root: str | Path, layout: str, task: str, train_split: str = "", val_split: str = "",
                max_depth: float = 10.0, num_classes: int = 0) -> tuple[str, DenseDataset, DenseDataset]:
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in DEFAULT_SPLITS:
        raise DenseDataError(f"unknown layout '{layout}'; choose auto or one of {', '.join(DEFAULT_SPLITS)}")
    return (layout, open_split(root, layout, task, train_split or DEFAULT_SPLITS[layout][0], max_depth, num_classes),
            open_split(root, layout, task, reported_split(layout, val_split), max_depth, num_classes))


def reported_split(layout: str, val_split: str = "") -> str:
    """The split a transfer's results are reported on: `val_split`, or the layout's default."""
    return val_split or DEFAULT_SPLITS[layout][1]


def open_split(root: str | Path, layout: str, task: str, split: str, max_depth: float = 10.0,
               num_classes: int = 0) -> DenseDataset:
    """One split of a resolved layout, with the task's settings (open_splits opens train and val with it)."""
    kw: dict = {"max_depth": max_depth} if task == "depth" else ({"num_classes": num_classes} if num_classes else {})
    ds = open_dense(root, layout, task, split, **kw)
    ds.split = split
    return ds


def open_transfer_splits(root: str | Path, t) -> tuple[str, DenseDataset, DenseDataset, DenseDataset | None]:
    """(layout, train, val, select or None) of a transfer config `t` (transfer.*), checked: the selection split
    (where a probe grid chooses) is not the reported one, and no two of the splits share an image (unless
    t.allow_shared_splits). What `qclip transfer` opens, and what the study checks before it trains."""
    layout, train, val = open_splits(root, t.layout, t.task, t.train_split, t.val_split, t.max_depth, t.num_classes)
    if t.probe_weight_decays and t.select_split == val.split:
        raise DenseDataError(f"transfer.select_split '{t.select_split}' is the split the results are reported on; "
                             "choose the probe grid on another held-out split (the world's: dev)")
    check_disjoint(root, train, val, "evaluation", t.allow_shared_splits)
    select = None
    if t.probe_weight_decays:  # held-out images to choose each fraction's weight decay on
        select = open_split(root, layout, t.task, t.select_split, t.max_depth, t.num_classes)
        check_disjoint(root, train, select, "selection", t.allow_shared_splits)
        check_disjoint(root, select, val, "evaluation", t.allow_shared_splits)
    return layout, train, val, select


def image_identities(ds: DenseDataset) -> dict[str, str]:
    """identity -> key of every image of `ds`: the resolved file path, or the sha1 of the bytes a shard holds."""
    out = {}
    for p in ds.pairs:
        src = p.image
        ident = (hashlib.sha1(src).hexdigest() if isinstance(src, (bytes, bytearray))
                 else str(Path(src).resolve()))
        out[ident] = p.key
    return out


def check_disjoint(root: str | Path, train: DenseDataset, evaluated: DenseDataset, what: str = "evaluation",
                   allow: bool = False) -> None:
    """Refuse a transfer whose training split shares images with a split it is evaluated or selected on, unless
    `allow` (transfer.allow_shared_splits): numbers measured on training images are not transfer results."""
    if allow:
        return
    a, b = image_identities(train), image_identities(evaluated)
    shared = set(a) & set(b)
    if not shared:
        return
    same = len(shared) == len(a) == len(b)
    example = b[next(iter(sorted(shared)))]
    hint = (f"'{root}' has no '{train.split}' and '{evaluated.split}' splits of its own, so both read the same "
            "folder. " if same else "")
    raise DenseDataError(
        f"{hint}The training split '{train.split}' ({len(a)} images) and the {what} split '{evaluated.split}' "
        f"({len(b)} images) of '{root}' share {len(shared)} images (e.g. {example}). Point --data at a dataset "
        f"with separate splits (ADE20k images/training + images/validation; NYU train/ + test/; a qclip folder "
        f"holding one dataset per split), or name disjoint ones with transfer.train_split / transfer.val_split; "
        f"transfer.allow_shared_splits=true evaluates on training images on purpose")


def infer_num_classes(ds: DenseDataset) -> int:
    if ds.num_classes:
        return ds.num_classes
    top = max(int(t[t != 255].max(initial=-1)) for t in (ds._target(p) for p in ds.pairs))
    return top + 1


class TransferDataset(Dataset):
    """Image resized to `size`x`size` and normalised; training targets resized (nearest) to the same size,
    evaluation targets kept at their own resolution (metrics are computed there).

    With `scale_range` other than (1, 1), training samples follow mmsegmentation's ADE20k pipeline instead
    (`augment.train_transform`: RandomResize keeping the aspect ratio within `resize_scale` x r, RandomCrop
    `size` with `cat_max_ratio`, PhotoMetricDistortion when `photometric`), then normalised and padded to
    `size`x`size` with ignore (segmentation) or 0 = invalid (depth) where the image is smaller.
    `native` (evaluation with sliding windows or several scales): the image at its own size, normalised; the
    evaluation resizes it per scale (`inference.predict`)."""

    def __init__(self, ds: DenseDataset, indices: list[int], size: int, mean: tuple, std: tuple,
                 train: bool, scale_range: tuple[float, float] = (1.0, 1.0), images: bool = True,
                 resize_scale: list[int] | tuple = (), cat_max_ratio: float = 1.0, photometric: bool = False,
                 native: bool = False) -> None:
        """images=False: items hold the target and key only (the image's probe features are known already)."""
        self.ds, self.indices, self.size, self.train, self.images = ds, indices, size, train, images
        self.scale_range, self.native = tuple(scale_range), native
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.key = "seg" if ds.task == "segmentation" else "depth"
        self.augment = None
        if train and self.scale_range != (1.0, 1.0):
            self.augment = train_transform(size, self.scale_range, resize_scale,
                                           cat_max_ratio if self.key == "seg" else 1.0, photometric, IGNORE_INDEX)

    @classmethod
    def for_transfer(cls, ds: DenseDataset, indices: list[int], t, mean: tuple, std: tuple,
                     train: bool) -> "TransferDataset":
        """The dataset a transfer config `t` (transfer.*) trains or evaluates on."""
        if train:
            return cls(ds, indices, t.image_size, mean, std, train=True, scale_range=tuple(t.scale_range),
                       resize_scale=t.resize_scale, cat_max_ratio=t.cat_max_ratio, photometric=t.photometric)
        return cls(ds, indices, t.image_size, mean, std, train=False, native=t.eval_mode == "slide")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        if not self.images:
            return {"target": self._fit(torch.from_numpy(np.ascontiguousarray(self.ds.target(self.indices[i])))),
                    "key": self.ds.pairs[self.indices[i]].key}
        item = self.ds[self.indices[i]]
        img = torch.from_numpy(np.asarray(item["image"].convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        target = torch.from_numpy(np.ascontiguousarray(item[self.key]))
        if self.augment is not None:
            return self._augmented(img, target, item["key"])
        if not self.native:
            img = F.interpolate(img[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        return {"image": (img - self.mean) / self.std, "target": self._fit(target), "key": item["key"]}

    def _fit(self, target: torch.Tensor) -> torch.Tensor:
        """Training targets at the input size (nearest); evaluation targets as they are."""
        if self.train and target.shape != (self.size, self.size):
            target = F.interpolate(target[None, None].float(), size=(self.size, self.size), mode="nearest")[0, 0]
            target = target.long() if self.key == "seg" else target
        return target

    def fingerprint(self) -> str:
        """Identifies the network inputs: the images (their bytes, or path + size + mtime) and the transform."""
        h = hashlib.sha1(repr((self.size, self.mean.flatten().tolist(), self.std.flatten().tolist(),
                               self.train, self.scale_range, self.native, repr(self.augment))).encode())
        for i in self.indices:
            src = self.ds.pairs[i].image
            if isinstance(src, (bytes, bytearray)):
                h.update(src)
            else:
                st = Path(src).stat()
                h.update(f"{Path(src).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def _augmented(self, img: torch.Tensor, target: torch.Tensor, key: str) -> dict:
        img, target = self.augment(tv_tensors.Image(img), tv_tensors.Mask(target.float()))
        img = (img.as_subclass(torch.Tensor) - self.mean) / self.std
        target = target.as_subclass(torch.Tensor)
        S = self.size
        out_img = torch.zeros(3, S, S)  # 0 after normalisation = the mean colour (mmseg pads normalised inputs)
        out_t = torch.full((S, S), float(IGNORE_INDEX if self.key == "seg" else 0.0))
        ch, cw = img.shape[-2:]
        out_img[:, :ch, :cw] = img
        out_t[:ch, :cw] = target
        return {"image": out_img, "target": out_t.long() if self.key == "seg" else out_t, "key": key}


def collate(items: list[dict]) -> dict:
    targets = [it["target"] for it in items]
    same = len({t.shape for t in targets}) == 1
    out = {"key": [it["key"] for it in items], "target": torch.stack(targets) if same else targets}
    if "image" in items[0]:  # images at their own sizes (sliding-window evaluation) stay a list
        images = [it["image"] for it in items]
        out["image"] = torch.stack(images) if len({im.shape for im in images}) == 1 else images
    return out
