"""A convolutional stem for open_clip's VisionTransformer, after "Early Convolutions Help Transformers See
Better" (Xiao et al., 2021): stride-2 3x3 convolutions (BN, ReLU) down to the patch grid, then a 1x1
projection to the width. It replaces the patchify convolution (`visual.conv1`), so the token grid, position
embeddings, `forward_intermediates` and CoCa's generation are unchanged.

Why: at 64 px with 8 px patches a small object falls inside one patch, and a patchify ViT learns shape slowly
from a few thousand images; a convolutional stem learns it much sooner, at a somewhat higher step time. open_clip has no such option, so the model folder records it outside
`model_cfg` (`open_clip_config.json` -> "qclip": {"vision_stem": "conv"}) and `create_clip` applies it.
"""
from __future__ import annotations

import math

from torch import nn

VISION_STEMS = ("patch", "conv")


class ConvStem(nn.Sequential):
    """log2(patch) stride-2 3x3 convs (channels width/2^k ... width), then a 1x1 conv to `width`."""

    def __init__(self, patch_size: int, width: int, in_chans: int = 3):
        n = int(math.log2(patch_size))
        if 2 ** n != patch_size or n < 1:
            raise ValueError(f"a conv stem needs a power-of-two patch size, not {patch_size}")
        layers: list[nn.Module] = []
        c_in = in_chans
        for k in range(n):
            c_out = max(16, width // 2 ** (n - 1 - k))
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, width, 1))
        super().__init__(*layers)


def apply_vision_stem(visual: nn.Module, stem: str) -> None:
    """Give an open_clip VisionTransformer the named stem (in place); "patch" leaves it as built."""
    if stem not in VISION_STEMS:
        raise ValueError(f"unknown vision stem '{stem}'; choose one of {', '.join(VISION_STEMS)}")
    if stem == "patch":
        return
    conv1 = getattr(visual, "conv1", None)
    if not isinstance(conv1, nn.Conv2d):
        raise ValueError(f"vision stem '{stem}' applies to open_clip's VisionTransformer, not {type(visual).__name__}")
    visual.conv1 = ConvStem(conv1.kernel_size[0], conv1.out_channels, conv1.in_channels)
