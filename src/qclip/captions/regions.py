"""Region supervision for the in-repo captioner: object boxes with class names, as captioners such as
Florence-2 and GRiT learn from region annotations besides image-level captions.

Why: from captions alone a small CoCa learns colours quickly but the shapes of small objects hardly at all
(the decoder must first learn where to look). A linear classifier on the mean of the image tokens inside
each object's box gives the tower a direct, local signal for "what is this object"; the caption decoder
then reads it from those tokens (benchmarks/RESULTS.md, "Captioner", has objects named with and without it).

Boxes come from samples that carry a scene graph (`meta.scene.objects[*].bbox/shape/visible`, the world's
curated split); a dataset without any trains the captioner on captions alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the stored image


def object_boxes(meta: dict) -> list[tuple[Box, str]]:
    """(box, class name) of each visible object in a sample's scene graph; [] when it has none."""
    scene = meta.get("scene") or {}
    return [(tuple(o["bbox"]), o["shape"]) for o in scene.get("objects", [])
            if o.get("visible") and o.get("bbox") and o.get("shape")]


def box_in_input(box: Box, width: int, height: int, size: int) -> Box | None:
    """Where a box of the stored image lands after open_clip's eval transform (shortest side resized to
    `size`, centre crop); None when it falls outside the crop."""
    s = size / min(width, height)
    ox, oy = (width * s - size) / 2, (height * s - size) / 2
    x0, y0 = max(0.0, box[0] * s - ox), max(0.0, box[1] * s - oy)
    x1, y1 = min(float(size), box[2] * s - ox), min(float(size), box[3] * s - oy)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


class RegionHead(nn.Module):
    """Classifies each box from the mean of the patch tokens it overlaps (token grid `grid` x `grid`)."""

    def __init__(self, width: int, n_classes: int, grid: int, image_size: int) -> None:
        super().__init__()
        self.grid, self.cell = grid, image_size / grid
        self.fc = nn.Linear(width, n_classes)

    def forward(self, tokens: torch.Tensor, boxes: list[list[tuple[Box, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: B x grid^2 x width; boxes[i]: (box in input pixels, class id) of image i.
        Returns (logits, targets) over all boxes of the batch."""
        g = tokens.reshape(tokens.shape[0], self.grid, self.grid, -1)
        feats, targets = [], []
        for i, image_boxes in enumerate(boxes):
            for (x0, y0, x1, y1), label in image_boxes:
                c0, r0 = int(x0 // self.cell), int(y0 // self.cell)
                c1, r1 = int(-(-x1 // self.cell)), int(-(-y1 // self.cell))  # ceil: every token it touches
                feats.append(g[i, r0:r1, c0:c1].mean((0, 1)))
                targets.append(label)
        if not feats:
            return tokens.new_zeros(0, self.fc.out_features), torch.zeros(0, dtype=torch.long)
        return self.fc(torch.stack(feats)), torch.tensor(targets, device=tokens.device)

    def loss(self, tokens: torch.Tensor, boxes: list[list[tuple[Box, int]]]) -> torch.Tensor:
        logits, targets = self(tokens, boxes)
        return F.cross_entropy(logits, targets) if len(targets) else tokens.sum() * 0.0
