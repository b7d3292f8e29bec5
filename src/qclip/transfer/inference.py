"""Dense inference as mmsegmentation evaluates: whole-image or sliding-window, optionally over several scales
and with horizontal flips, the predictions merged and resized to each target's own resolution.

`forward(x, size)` is the network (encoder + head) on a batch of normalised images, returning segmentation
logits (N, C, h, w) or depth in metres (N, h, w) at `size`. Several predictions of one image (scales, flips)
are merged as mmseg's test-time augmentation merges them: segmentation by averaging class probabilities, depth
by averaging metres.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .augment import keep_ratio_size

Forward = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def _channels(out: torch.Tensor, task: str) -> torch.Tensor:
    return out if task == "segmentation" else out[:, None]


def slide_inference(forward: Forward, image: torch.Tensor, crop: int, stride: int, task: str,
                    batch_size: int = 16) -> torch.Tensor:
    """mmseg's `slide_inference` on one image (1, 3, H, W): `crop` x `crop` windows every `stride` pixels, the
    last window of a row or column flush with the border, outputs summed where windows overlap and divided by
    the number of windows over each pixel. A window larger than the image is padded with 0 (the mean colour
    after normalisation, as mmseg pads its inputs) and its output cut back. Returns (1, C, H, W)."""
    _, _, H, W = image.shape
    rows = max(H - crop + stride - 1, 0) // stride + 1
    cols = max(W - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, H), min(c * stride + crop, W)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    windows = torch.cat([F.pad(image[:, :, y1:y2, x1:x2], (0, crop - (x2 - x1), 0, crop - (y2 - y1)))
                         for y1, y2, x1, x2 in boxes])
    outs = torch.cat([_channels(forward(windows[i:i + batch_size], (crop, crop)).float(), task)
                      for i in range(0, len(windows), batch_size)])
    total = torch.zeros(1, outs.shape[1], H, W)
    count = torch.zeros(1, 1, H, W)
    for out, (y1, y2, x1, x2) in zip(outs.cpu(), boxes):
        total[0, :, y1:y2, x1:x2] += out[:, :y2 - y1, :x2 - x1]
        count[0, :, y1:y2, x1:x2] += 1
    return total / count


def _to_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                       align_corners=False)


def _merge(outs: list[torch.Tensor], task: str) -> torch.Tensor:
    if len(outs) == 1:
        return outs[0]
    if task == "segmentation":
        return torch.stack([o.softmax(1) for o in outs]).mean(0)
    return torch.stack(outs).mean(0)


def predict(forward: Forward, images: torch.Tensor, target_size: tuple[int, int], t, task: str,
            device: torch.device) -> torch.Tensor:
    """Predictions for a batch at `target_size`: segmentation scores (N, C, h, w; argmax = the class) or depth
    (N, h, w). `t` (transfer.*) decides the protocol:
    - eval_mode whole: `images` (N, 3, S, S) already resized to image_size; one forward (and its flip);
    - eval_mode slide: `images` (1, 3, H, W) at the image's own size; per ratio of eval_scales, resized keeping
      the aspect ratio within resize_scale x ratio (short side image_size x ratio), then `slide_inference`
      with image_size windows at eval_stride (and again on the flipped image with eval_flip)."""
    flips = (False, True) if t.eval_flip else (False,)
    outs = []
    if t.eval_mode == "whole":
        x = images.to(device)
        for flip in flips:
            out = _channels(forward(x.flip(-1) if flip else x, target_size).float(), task)
            outs.append(out.flip(-1) if flip else out)
    else:
        long = t.resize_scale[0] if t.resize_scale else math.inf
        short = t.resize_scale[1] if t.resize_scale else t.image_size
        stride = t.eval_stride or max(1, round(t.image_size * 2 / 3))
        H, W = images.shape[-2:]
        for ratio in t.eval_scales:
            x = F.interpolate(images, size=keep_ratio_size(H, W, short * ratio, long * ratio), mode="bilinear",
                              antialias=True, align_corners=False).to(device)
            for flip in flips:
                out = slide_inference(forward, x.flip(-1) if flip else x, t.image_size, stride, task,
                                      t.eval_batch_size)
                outs.append(_to_size(out.flip(-1) if flip else out, target_size))
    outs = [_to_size(o.cpu(), target_size) for o in outs]
    merged = _merge(outs, task)
    return merged if task == "segmentation" else merged[:, 0]
