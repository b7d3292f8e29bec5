"""One colour per segmentation class id, used by every figure that draws a mask (world preview, transfer
predictions, the report's qualitative grid), so a class has the same colour everywhere; one colour map for depth."""
from __future__ import annotations

# matplotlib's tab10 then tab20's light half: distinct for up to 20 classes; class id i -> PALETTE[i % 20]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]
IGNORE_COLOUR = "#000000"  # label 255: not scored
# depth in every figure (world preview, transfer predictions, the report's qualitative grid), always with a colour
# bar in metres: near = bright, far = dark, as DPT and Depth Anything draw it
DEPTH_CMAP = "magma_r"


def class_colours(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def mask_cmap(n: int):
    """A matplotlib colormap for class ids 0..n-1 (draw with vmin=-0.5, vmax=n-0.5); masked pixels black."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(class_colours(max(n, 1))).with_extremes(bad=IGNORE_COLOUR)


def class_legend(fig, names: list[str], y: float = 0.0) -> None:
    """A one-row legend of class colours along the figure's bottom edge."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="none", label=n) for n, c in zip(names, class_colours(len(names)))]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y), ncol=min(len(names), 8), fontsize=7,
               frameon=False, handlelength=1.2, columnspacing=1.0)
