"""mmsegmentation's training and test-time resizing as torchvision.transforms.v2 transforms: image
(`tv_tensors.Image`, float in [0, 1]) and target (`tv_tensors.Mask`: class ids, or depth in metres) go through
each transform together, so masks stay aligned with their images; the target is resized nearest, never blended.

- `RandomResizeKeepRatio`: mmseg `RandomResize(scale=(long, short), ratio_range, keep_ratio=True)`.
- `RandomCropCatMax`: mmseg `RandomCrop(crop_size, cat_max_ratio)`: re-draw (up to 10 times) a crop that one
  class fills more than `cat_max_ratio` of, or that holds a single class.
- `PhotoMetricDistortion`: mmseg's brightness / contrast / saturation / hue jitter, each with probability 1/2;
  acts on the image only (v2's colour transforms pass masks through).
Draws use torch's global generator: seeded by the transfer run in the main process, per worker by DataLoader.
"""
from __future__ import annotations

import math

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


def keep_ratio_size(h: int, w: int, short: float, long: float = math.inf) -> tuple[int, int]:
    """(h, w) rescaled keeping the aspect ratio so the short side is at most `short` and the long side at most
    `long` (mmcv's `rescale_size` with a (long, short) scale: the smaller of the two factors)."""
    k = min(short / min(h, w), long / max(h, w))
    return max(1, round(h * k)), max(1, round(w * k))


class RandomResizeKeepRatio(v2.Transform):
    def __init__(self, short: int, long: float = math.inf, ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.short, self.long, self.ratio_range = short, long, tuple(ratio_range)

    def make_params(self, flat_inputs: list) -> dict:
        lo, hi = self.ratio_range
        r = lo + (hi - lo) * float(torch.rand(()))
        h, w = v2.query_size(flat_inputs)
        return {"size": list(keep_ratio_size(h, w, self.short * r, self.long * r))}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):  # class ids and depths are never interpolated between pixels
            # nearest-exact samples pixel centres, as the image's bilinear resize does; plain nearest (torch's
            # and cv2's, so mmseg's) floors, shifting the mask up to a pixel against the image
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return TF.resize(inpt, params["size"], antialias=True)


class RandomCropCatMax(v2.Transform):
    def __init__(self, size: int, cat_max_ratio: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def _draw(self, h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(0, max(1, h - self.size + 1), ()))
        left = int(torch.randint(0, max(1, w - self.size + 1), ()))
        return top, left

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        top, left = self._draw(h, w)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        if self.cat_max_ratio < 1 and masks:
            mask = masks[0]
            for _ in range(10):
                crop = mask[..., top:top + self.size, left:left + self.size]
                _, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = self._draw(h, w)
        return {"top": top, "left": left, "height": min(self.size, h), "width": min(self.size, w)}

    def transform(self, inpt, params: dict):
        return TF.crop(inpt, **params)


class PhotoMetricDistortion(v2.Transform):
    """mmseg's PhotoMetricDistortion on a [0, 1] image: brightness + delta (|delta| <= 32/255), contrast x alpha,
    saturation and hue (torchvision's adjust_saturation / adjust_hue; hue shift up to 18 of OpenCV's 180 steps),
    each with probability 1/2, contrast before or after the colour changes at random; clipped to [0, 1] after
    every step as mmseg clips to uint8. Masks pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness_delta: float = 32 / 255, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18 / 180) -> None:
        super().__init__()
        self.brightness_delta, self.contrast, self.saturation, self.hue_delta = (
            brightness_delta, contrast, saturation, hue_delta)

    @staticmethod
    def _uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    def make_params(self, flat_inputs: list) -> dict:
        coin = lambda: bool(torch.rand(()) < 0.5)  # noqa: E731
        return {"brightness": self._uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
                "contrast_first": coin(),
                "contrast": self._uniform(*self.contrast) if coin() else None,
                "saturation": self._uniform(*self.saturation) if coin() else None,
                "hue": self._uniform(-self.hue_delta, self.hue_delta) if coin() else None}

    def transform(self, inpt, params: dict):
        x = inpt
        if params["brightness"] is not None:
            x = (x + params["brightness"]).clamp(0, 1)
        contrast = (lambda y: (y * params["contrast"]).clamp(0, 1)) if params["contrast"] is not None else None
        if contrast and params["contrast_first"]:
            x = contrast(x)
        if params["saturation"] is not None:
            x = TF.adjust_saturation(x, params["saturation"]).clamp(0, 1)
        if params["hue"] is not None:
            x = TF.adjust_hue(x, params["hue"])
        if contrast and not params["contrast_first"]:
            x = contrast(x)
        return tv_tensors.wrap(x, like=inpt) if isinstance(inpt, tv_tensors.Image) else x


def train_transform(size: int, scale_range: tuple[float, float], resize_scale: list[int] | tuple = (),
                    cat_max_ratio: float = 1.0, photometric: bool = False, ignore_index: int = 255) -> v2.Compose:
    """mmseg's ADE20k training pipeline up to normalisation: RandomResize within `resize_scale` x r (short side
    `size` x r when resize_scale is empty), RandomCrop `size` (cat_max_ratio), PhotoMetricDistortion. (The flip
    is drawn for the whole batch in the training loop, so a run under torchrun draws what one process draws.)"""
    long, short = (resize_scale[0], resize_scale[1]) if resize_scale else (math.inf, size)
    steps = [RandomResizeKeepRatio(short, long, scale_range), RandomCropCatMax(size, cat_max_ratio, ignore_index)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return v2.Compose(steps)
