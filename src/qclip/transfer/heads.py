"""Dense heads over multi-level encoder features (list of NCHW maps, shallow to deep).

- `LinearProbeHead`: DINOv2's linear head — upsample the levels to the finest one, concatenate, BatchNorm,
  1x1 conv (DINOv2 `BNHead`, "ms" = last 4 layers); the encoder stays frozen.
- `SimplePyramid`: ViTDet's simple feature pyramid, in mmseg's `MultiLevelNeck` form, for plain ViTs whose
  levels share one stride: rescale level i by (4, 2, 1, 0.5) with deconvs / identity / max-pool.
- `UperNetDecoder`: UperNet (Xiao et al. 2018) as mmsegmentation's `UPerHead`: a pyramid pooling module on
  the deepest level (pool scales 1, 2, 3, 6), FPN (lateral 1x1, top-down sum, 3x3 smoothing), all levels fused
  at the finest stride; for segmentation fine-tuning (the ADE20k recipe's head).
- `DPTDecoder`: DPT's fusion decoder (residual conv units, progressive 2x upsampling), for depth fine-tuning.
Depth outputs are classification over bins with the prediction the softmax-weighted bin centre (AdaBins;
DINOv2's depth probe uses 256 uniform or log bins), or with `depth_bins=0` one channel of log depth (`LogDepth`);
either way depth is positive and bounded by `max_depth`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


class DepthBins(nn.Module):
    """Logits over `n` depth bins -> metres (softmax-weighted bin centres)."""

    def __init__(self, n: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0, spacing: str = "log") -> None:
        super().__init__()
        if spacing == "log":
            centres = torch.logspace(math.log10(max(min_depth, 1e-3)), math.log10(max_depth), n)
        else:
            centres = torch.linspace(min_depth, max_depth, n)
        self.register_buffer("centres", centres.view(1, n, 1, 1), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(1) * self.centres).sum(1)


class LogDepth(nn.Module):
    """One channel of log depth -> metres. With a linear probe and SILog (a loss on log depth) the problem is
    convex, so a short CPU schedule converges where a softmax over bins does not. Predictions are clipped to
    [min_depth, max_depth] in evaluation only: a clip while training has no gradient, and pixels pushed past it
    stayed there (a probe ended at RMSE 4 where its other seeds reached 1.3)."""

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        super().__init__()
        self.lo, self.hi = math.log(max(min_depth, 1e-3)), math.log(max_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0]
        return x.exp() if self.training else x.clamp(self.lo, self.hi).exp()


class LinearProbeHead(nn.Module):
    def __init__(self, channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(sum(channels))
        self.conv = nn.Conv2d(sum(channels), out_channels, 1)

    @staticmethod
    def stack(feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head's parameter-free first step: every level upsampled to the finest one and concatenated.
        A probe over frozen features computes it once per image (`qclip transfer` caches its output) instead
        of once per step; stacking stacked features is a no-op."""
        if len(feats) == 1:
            return feats
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
        # channels-last: the head reads (pixels, channels) rows without a copy
        return [torch.cat([_resize(f, size) for f in feats], 1).contiguous(memory_format=torch.channels_last)]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        # BatchNorm + 1x1 conv as one (pixels, channels) matrix: the same maths as bn -> conv, 2x faster on a
        # CPU than mkldnn's 1x1 convolution with a handful of output channels
        x = self.stack(feats)[0]
        n, c, h, w = x.shape
        bn, k = self.bn, self.conv.out_channels
        if self.training:  # as nn.BatchNorm2d counts them (its state dict carries the count)
            bn.num_batches_tracked.add_(1)
        y = F.batch_norm(x.permute(0, 2, 3, 1).reshape(-1, c), bn.running_mean, bn.running_var, bn.weight,
                         bn.bias, self.training, bn.momentum, bn.eps)
        return F.linear(y, self.conv.weight.view(k, c), self.conv.bias).view(n, h, w, k).permute(0, 3, 1, 2)


class SimplePyramid(nn.Module):
    """Plain-ViT levels (one stride) -> strides /4, /2, x1, x2 of it (mmseg MultiLevelNeck, ViTDet)."""

    def __init__(self, channels: list[int], width: int) -> None:
        super().__init__()
        n = len(channels)
        scales = [4, 2, 1, 0.5][-n:] if n <= 4 else [1] * n
        ops = []
        for c, s in zip(channels, scales):
            if s == 4:
                op = nn.Sequential(nn.ConvTranspose2d(c, width, 2, 2), nn.BatchNorm2d(width), nn.GELU(),
                                   nn.ConvTranspose2d(width, width, 2, 2))
            elif s == 2:
                op = nn.ConvTranspose2d(c, width, 2, 2)
            elif s == 1:
                op = nn.Conv2d(c, width, 1)
            else:
                op = nn.Sequential(nn.Conv2d(c, width, 1), nn.MaxPool2d(2, ceil_mode=True))
            ops.append(op)
        self.ops = nn.ModuleList(ops)
        self.out_channels = [width] * n

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [op(f) for op, f in zip(self.ops, feats)]


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling on one map: average-pool to each scale, 1x1 conv, upsample, concatenate with the
    input, 3x3 conv (mmseg `PPM` + `bottleneck`): global context for the deepest level."""

    def __init__(self, cin: int, width: int, scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        # no BatchNorm on the pooled maps (mmseg has one): at scale 1 and batch 1 there is one value per channel
        self.branches = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(cin, width, 1), nn.ReLU(True))
                                      for s in scales)
        self.bottleneck = _conv_bn_relu(cin + width * len(scales), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return self.bottleneck(torch.cat([x] + [_resize(b(x), size) for b in self.branches], 1))


class UperNetDecoder(nn.Module):
    def __init__(self, channels: list[int], width: int, out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_conv_bn_relu(c, width, 1) for c in channels[:-1])
        self.ppm = PyramidPooling(channels[-1], width)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in channels[:-1])
        self.fuse = _conv_bn_relu(width * len(channels), width)
        self.cls = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(width, out_channels, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [l(f) for l, f in zip(self.lateral, feats[:-1])] + [self.ppm(feats[-1])]
        for i in range(len(lat) - 1, 0, -1):  # top-down: coarse into fine
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[-2:])
        outs = [s(x) for s, x in zip(self.smooth, lat[:-1])] + [lat[-1]]  # the PPM output is already smoothed
        size = outs[0].shape[-2:]
        return self.cls(self.fuse(torch.cat([_resize(o, size) for o in outs], 1)))


class FCNHead(nn.Module):
    """mmseg's auxiliary `FCNHead` (num_convs=1, concat_input=False): 3x3 conv-BN-ReLU, dropout 0.1, 1x1 classifier.
    It reads one level of the pyramid during training only; its loss enters with `transfer.aux_loss_weight`
    (0.4 in mmseg's UperNet configs) and deepens the supervision of the encoder's middle blocks."""

    def __init__(self, cin: int, width: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(cin, width)
        self.cls = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(width, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.conv(x))


class _ResidualConvUnit(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DPTDecoder(nn.Module):
    def __init__(self, channels: list[int], width: int, out_channels: int) -> None:
        super().__init__()
        self.reassemble = nn.ModuleList(nn.Conv2d(c, width, 3, padding=1, bias=False) for c in channels)
        self.rcu_lateral = nn.ModuleList(_ResidualConvUnit(width) for _ in channels)
        self.rcu_fused = nn.ModuleList(_ResidualConvUnit(width) for _ in channels)
        self.head = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(True),
                                  nn.Conv2d(width // 2, out_channels, 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for i in range(len(feats) - 1, -1, -1):  # deepest first, as DPT's fusion blocks
            lat = self.reassemble[i](feats[i])
            x = lat if x is None else _resize(x, lat.shape[-2:]) + self.rcu_lateral[i](lat)
            x = self.rcu_fused[i](x)
        return self.head(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class DenseHead(nn.Module):
    """A task head over an encoder's levels: logits (segmentation) or metres (depth) at the input size.
    `aux_level` >= 0 (segmentation fine-tuning): an auxiliary FCN head on that level of the pyramid; in training
    the head then returns (main, auxiliary) logits, both at the input size (mmseg's in_index=2: the third)."""

    def __init__(self, channels: list[int], plain: bool, task: str, mode: str, num_classes: int = 0,
                 width: int = 128, depth_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0,
                 bin_spacing: str = "log", aux_level: int = -1) -> None:
        super().__init__()
        out = num_classes if task == "segmentation" else max(depth_bins, 1)
        self.task = task
        self.neck = SimplePyramid(channels, width) if (plain and mode == "finetune") else nn.Identity()
        ch = self.neck.out_channels if isinstance(self.neck, SimplePyramid) else channels
        if mode == "probe":
            self.decoder = LinearProbeHead(ch, out)
        elif task == "segmentation":
            self.decoder = UperNetDecoder(ch, width, out)
        else:
            self.decoder = DPTDecoder(ch, width, out)
        self.aux_level = min(aux_level, len(ch) - 1)
        # mmseg's auxiliary head: 256 channels (beside UperNet's 512 or 768)
        self.aux = FCNHead(ch[self.aux_level], max(1, min(256, width // 2)), out) if aux_level >= 0 else None
        self.bins: nn.Module | None = None
        if task == "depth":
            self.bins = (DepthBins(depth_bins, min_depth, max_depth, bin_spacing) if depth_bins
                         else LogDepth(min_depth, max_depth))

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]):
        feats = self.neck(feats)
        out = self.decoder(feats)
        if self.bins is not None:
            # bins -> metres at the decoder's resolution, then upsample the one-channel map (DINOv2's depth head
            # does the same): upsampling 256 bin logits to full size cost 20x the rest of a probe step
            return _resize(self.bins(out)[:, None], size)[:, 0]
        if self.aux is not None and self.training:
            return _resize(out, size), _resize(self.aux(feats[self.aux_level]), size)
        return _resize(out, size)
