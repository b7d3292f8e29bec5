"""Qualitative predictions: image | ground truth | prediction, a row per validation sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..data.palette import class_legend, mask_cmap


def save_prediction_grid(rows: list[dict], task: str, path: str | Path, title: str = "",
                         num_classes: int = 0, class_names: list[str] | None = None) -> None:
    """rows: {"image": HxWx3 uint8, "target": HxW, "pred": HxW}. Masks in the one class palette with a legend
    of class names; depth in metres with a colourbar per row (ground truth and prediction share its scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = task == "segmentation"
    n = max(num_classes, 1)
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    # depth: a narrow fourth column per row holds that row's colourbar
    fig, axes = plt.subplots(len(rows), 3 if seg else 4, figsize=(6.6 if seg else 7.2, 2.2 * len(rows)),
                             squeeze=False, gridspec_kw=None if seg else {"width_ratios": [1, 1, 1, 0.07]})
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"])
        if task == "segmentation":
            t = np.ma.masked_equal(row["target"], 255)
            kw = dict(cmap=mask_cmap(n), vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
            axes[r, 1].imshow(t, **kw)
            axes[r, 2].imshow(row["pred"], **kw)
        else:
            valid = row["target"] > 0
            lo, hi = (row["target"][valid].min(), row["target"][valid].max()) if valid.any() else (0, 1)
            axes[r, 1].imshow(np.ma.masked_where(~valid, row["target"]), cmap="magma_r", vmin=lo, vmax=hi)
            im = axes[r, 2].imshow(row["pred"], cmap="magma_r", vmin=lo, vmax=hi)
            cb = fig.colorbar(im, cax=axes[r, 3])
            cb.set_label("depth (m)", fontsize=7)
            cb.ax.tick_params(labelsize=6)
        for c, name in enumerate(("image", "ground truth", "prediction")):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    # fixed margins (in inches at the top: the title, then the column names): tight_layout measured every label
    # and took half of the grid's time, and a study draws ~50 grids
    h = fig.get_figheight()
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / h, va="top")
    bottom = 0.35 / h if seg else 0.01  # room for the class legend
    if seg:
        class_legend(fig, names, y=0.0)
    fig.subplots_adjust(left=0.02, right=0.98 if seg else 0.9, bottom=bottom, top=1 - (0.55 if title else 0.3) / h,
                        wspace=0.05, hspace=0.05)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
