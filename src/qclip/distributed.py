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


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks, for CPUs (gloo), where
    torch's nn.SyncBatchNorm refuses to run (it needs a GPU): the same maths (sums of x and x^2 all-reduced with
    their gradients, unbiased variance into the running estimate). On GPUs `sync_batchnorm` uses torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n]))
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = stats[c:2 * c] / count - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1))
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm2d computing global-batch statistics under torchrun: torch's SyncBatchNorm
    on GPUs (as mmsegmentation's SyncBN configs), CpuSyncBatchNorm on CPUs. Unchanged in one process."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            sync_batchnorm(child, device)
    return module
