"""Dense metrics, computed as mmsegmentation computes them.

Segmentation follows mmseg's `IoUMetric`: one confusion matrix over the whole dataset (ignore index excluded),
IoU per class = intersection / union, mIoU = mean over classes that occur (union > 0, i.e. `nanmean`), aAcc =
correct pixels / valid pixels. The confusion matrix is torchmetrics' `MulticlassConfusionMatrix`.
Depth follows mmseg's `DepthMetric`: each metric per image over valid pixels (min_depth < gt < max_depth),
then averaged over images; optional NYUv2 Eigen crop `[45:471, 41:601]` (for 480x640 targets).
"""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

EIGEN_CROP = (45, 471, 41, 601)
# each task's headline metric and its direction (+1: higher is better), for summaries, tables and the checks
HEADLINE = {"segmentation": ("mIoU", +1), "depth": ("RMSE", -1)}


class SegmentationMetric:
    """class_names: reported beside IoU_per_class; stuff_classes (names): background classes left out of
    `object_mIoU`, the mean IoU over the remaining (object) classes, where a scene's background is large and
    easy and the objects are what features must tell apart."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None,
                 stuff_classes: list[str] | None = None) -> None:
        # names that do not match the class count (a num_classes override) are not reported
        self.num_classes = num_classes
        self.class_names = class_names if class_names and len(class_names) == num_classes else None
        self.stuff = set(stuff_classes or [])
        # sync_on_compute off: torchmetrics would all-gather across an initialised process group on its own, and
        # a study under torchrun evaluates on rank 0 while the other ranks wait (a deadlock)
        self.cm = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False,
                                            sync_on_compute=False)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: int64 class ids (N, H, W) at the target's resolution."""
        self.cm.update(pred.flatten(), target.flatten())

    def reduce_across_ranks(self) -> None:
        """Under torchrun, each rank having seen its share of the images: the confusion matrix summed over the
        ranks, so intersections and unions are the dataset's (mmsegmentation's IoUMetric collects the same)."""
        import torch.distributed as dist

        dist.all_reduce(self.cm.confmat)

    def compute(self) -> dict:
        cm = self.cm.compute().double()  # rows: target, cols: prediction
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.nan)
        total = cm.sum()
        out = {"mIoU": float(iou.nanmean()) if (union > 0).any() else 0.0,
               "aAcc": float(inter.sum() / total) if total > 0 else 0.0}
        if self.class_names and self.stuff:
            objects = torch.tensor([n not in self.stuff for n in self.class_names])
            obj = iou[objects]
            out["object_mIoU"] = float(obj.nanmean()) if (~torch.isnan(obj)).any() else 0.0
        out["IoU_per_class"] = [None if torch.isnan(v) else round(float(v), 5) for v in iou]
        if self.class_names:
            out["class_names"] = list(self.class_names)
        return out


class DepthMetric:
    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool = False) -> None:
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop
        self.per_image: list[dict[str, float]] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: metres (N, H, W); target 0 = invalid."""
        for p, g in zip(pred.double(), target.double()):
            valid = (g > self.min_depth) & (g < self.max_depth)
            if self.eigen_crop:
                crop = torch.zeros_like(valid)
                t, b, l, r = EIGEN_CROP
                crop[t:b, l:r] = True
                valid &= crop
            if not valid.any():
                continue
            p, g = p[valid].clamp(self.min_depth, self.max_depth), g[valid]
            ratio = torch.maximum(p / g, g / p)
            err = p.log() - g.log()
            self.per_image.append({
                "RMSE": float(((p - g) ** 2).mean().sqrt()),
                "AbsRel": float(((p - g).abs() / g).mean()),
                "SqRel": float(((p - g) ** 2 / g).mean()),
                "log10": float((p.log10() - g.log10()).abs().mean()),
                "delta1": float((ratio < 1.25).double().mean()),
                "delta2": float((ratio < 1.25 ** 2).double().mean()),
                "delta3": float((ratio < 1.25 ** 3).double().mean()),
                # BTS / AdaBins evaluation: 100 x sqrt(var of the log error), per image
                "SILog": float(((err ** 2).mean() - err.mean() ** 2).clamp(min=0).sqrt() * 100),
            })

    def reduce_across_ranks(self) -> None:
        """Under torchrun: every rank's per-image errors, so the means run over the whole split."""
        import torch.distributed as dist

        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.per_image)
        self.per_image = [m for p in parts for m in p]

    def compute(self) -> dict:
        if not self.per_image:
            return {"images": 0}
        keys = self.per_image[0]
        out = {k: sum(m[k] for m in self.per_image) / len(self.per_image) for k in keys}
        return {**out, "images": len(self.per_image)}
