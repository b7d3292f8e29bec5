"""Qualitative predictions: image | ground truth | one prediction column per model, a row per validation sample.

A transfer run draws its own grid (`save_prediction_grid`) and keeps the arrays beside it (`save_examples`), so
the study report can put every method's prediction of the same images side by side (`save_comparison_grid`).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..data.palette import DEPTH_CMAP, class_legend, mask_cmap


def save_examples(rows: list[dict], path: str | Path) -> None:
    """The grid's arrays (image, target, pred per row) as one .npz: what a comparison across runs reads."""
    buf = io.BytesIO()
    np.savez_compressed(buf, image=np.stack([r["image"] for r in rows]), target=np.stack([r["target"] for r in rows]),
                        pred=np.stack([r["pred"] for r in rows]))
    with atomic_file(path, "wb") as f:
        f.write(buf.getvalue())


def load_examples(path: str | Path) -> list[dict]:
    with np.load(path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in ("image", "target", "pred")}
    return [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays["image"]))]


def save_prediction_grid(rows: list[dict], task: str, path: str | Path, title: str = "",
                         num_classes: int = 0, class_names: list[str] | None = None) -> None:
    """rows: {"image": HxWx3 uint8, "target": HxW, "pred": HxW}: one run's predictions."""
    save_comparison_grid(rows, {"prediction": [r["pred"] for r in rows]}, task, path, title, num_classes, class_names)


def save_comparison_grid(rows: list[dict], preds: dict[str, list[np.ndarray]], task: str, path: str | Path,
                         title: str = "", num_classes: int = 0, class_names: list[str] | None = None) -> None:
    """rows: {"image", "target"} per sample; preds: column name -> one HxW prediction per row. Masks in the one
    class palette with a legend of class names; depth in metres with a colourbar per row (ground truth and every
    prediction share its scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = task == "segmentation"
    n = max(num_classes, 1)
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    cols = ["image", "ground truth", *preds]
    k = len(cols)
    # depth: a narrow last column per row holds that row's colourbar
    fig, axes = plt.subplots(len(rows), k if seg else k + 1, figsize=(2.2 * k, 2.2 * len(rows)), squeeze=False,
                             gridspec_kw=None if seg else {"width_ratios": [1] * k + [0.07]})
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"])
        maps = [row["target"], *(p[r] for p in preds.values())]
        if seg:
            kw = dict(cmap=mask_cmap(n), vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
            axes[r, 1].imshow(np.ma.masked_equal(maps[0], 255), **kw)
            for c, m in enumerate(maps[1:], start=2):
                axes[r, c].imshow(m, **kw)
        else:
            valid = row["target"] > 0
            lo, hi = (row["target"][valid].min(), row["target"][valid].max()) if valid.any() else (0, 1)
            axes[r, 1].imshow(np.ma.masked_where(~valid, maps[0]), cmap=DEPTH_CMAP, vmin=lo, vmax=hi)
            for c, m in enumerate(maps[1:], start=2):
                im = axes[r, c].imshow(m, cmap=DEPTH_CMAP, vmin=lo, vmax=hi)
            cb = fig.colorbar(im, cax=axes[r, k])
            cb.set_label("depth (m)", fontsize=7)
            cb.ax.tick_params(labelsize=6)
        for c, name in enumerate(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    # fixed margins (in inches at the top: the title, then the column names): tight_layout measured every label
    # and took half of the grid's time, and a study draws ~50 grids
    h, w = fig.get_figheight(), fig.get_figwidth()
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / h, va="top")
    bottom = 0.35 / h if seg else 0.01  # room for the class legend
    if seg:
        class_legend(fig, names, y=0.0)
    fig.subplots_adjust(left=0.02, right=0.98 if seg else 1 - 0.7 / w, bottom=bottom,
                        top=1 - (0.55 if title else 0.3) / h, wspace=0.05, hspace=0.05)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
