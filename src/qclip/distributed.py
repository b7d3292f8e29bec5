"""The processes of a torchrun job (RANK / WORLD_SIZE / LOCAL_RANK): one process group for every stage, and the
pieces the training loops share under it: barriers and BatchNorm statistics over all ranks.

NCCL on GPUs (each rank on its LOCAL_RANK device), gloo on CPUs. Nothing here does anything in one process.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

# how long a rank waits at a barrier while rank 0 runs a stage alone (a study's probes, baselines, report): hours
# at real scale, where torch's default (30 min gloo, 10 min NCCL) would abort the waiting ranks
BARRIER_TIMEOUT_HOURS = 72


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); creates the process group on first use under torchrun."""
    world, r = world_size(), rank()
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=BARRIER_TIMEOUT_HOURS))
    return r, world, device


def is_distributed() -> bool:
    return world_size() > 1 and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def rank_slice(n: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """[lo, hi) of rank r's share of a batch of n, the ranks' shares in rank order (W ranks x n / W = one batch)."""
    r, world = rank() if r is None else r, world_size() if world is None else world
    return r * n // world, (r + 1) * n // world


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) value over the ranks: a logged loss, or a loss's normaliser (a count of masked
    pixels) as the whole batch has it per rank's share. The value itself in one process."""
    if world_size() == 1:
        return t.detach()
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world_size()


def global_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn` in training mode with the statistics of the global batch across ranks: the sums of x and x^2 and the
    count all-reduced with their gradients, the unbiased variance into the running estimate (as nn.SyncBatchNorm)."""
    from torch.distributed.nn.functional import all_reduce

    c = x.shape[1]
    n = torch.tensor([x.numel() // c], dtype=x.dtype)
    stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n]))
    count = stats[-1]
    mean = stats[:c] / count
    var = stats[c:2 * c] / count - mean * mean
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1))
    y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    return y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None] if bn.affine else y


def _cpu_sync(base: type) -> type:
    """A subclass of BatchNorm2d class `base` (nn.BatchNorm2d, timm's BatchNormAct2d) whose training forward uses
    global-batch statistics; what follows the normalisation in `base` (timm's drop + activation) is kept."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return base.forward(self, x)
        y = global_batch_norm(self, x)
        return self.act(self.drop(y)) if hasattr(self, "act") and hasattr(self, "drop") else y

    return type(f"CpuSync{base.__name__}", (base,), {"forward": forward, "global_stats": True})


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm2d computing global-batch statistics under torchrun: timm's
    convert_sync_batchnorm on GPUs (torch's SyncBatchNorm, keeping timm's BatchNormAct2d activations), and on CPUs,
    where torch's SyncBatchNorm refuses to run, the same maths in `global_batch_norm` (the modules keep their
    parameters; only their class changes). Unchanged in one process."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and not getattr(m, "global_stats", False):
            m.__class__ = _cpu_sync(type(m))
    return module
