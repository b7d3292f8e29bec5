"""The optimiser, schedule and training-state checkpoints that every qclip training loop shares (CLIP
pretraining, the baselines, the captioner, transfer heads): one place, so every loop decays, schedules and
resumes the same way.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes, atomic_write_json, read_json_or_none, remove_tree
from .models.checkpoint import load_weights, save_weights, torch_save_bytes, unwrap

# ---------------------------------------------------------------------------------------------------
# optimiser and schedule (as open_clip_train: no weight decay on gains, biases, logit scale, embeddings)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name or "norm" in name

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if exclude(name, p) else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# never weight-decayed under layer-wise decay, besides 1-d parameters (mmseg's LayerDecayOptimizerConstructor)
NO_DECAY_PATTERNS = ("*pos_embed", "*cls_token", "*positional_embedding", "*class_embedding")


def layer_decay_param_groups(net: torch.nn.Module, encoder: torch.nn.Module, lr: float, weight_decay: float,
                             layer_decay: float, encoder_lr_mult: float = 1.0) -> list[dict]:
    """Parameter groups with layer-wise lr decay, from timm's `param_groups_layer_decay` on `net` (which has a
    `group_matcher`: the encoder's stem, its blocks, then the head): a parameter in layer i of L trains at
    lr x layer_decay^(L - 1 - i) (the head, last, at lr), times `encoder_lr_mult` when it belongs to `encoder`.
    No weight decay on 1-d parameters and position / class embeddings."""
    from timm.optim import param_groups_layer_decay

    in_encoder = {id(p) for p in encoder.parameters()}
    out = []
    for g in param_groups_layer_decay(net, weight_decay, no_weight_decay_list=NO_DECAY_PATTERNS,
                                      layer_decay=layer_decay):
        for part, mult in (([p for p in g["params"] if id(p) in in_encoder], encoder_lr_mult),
                           ([p for p in g["params"] if id(p) not in in_encoder], 1.0)):
            if part:
                out.append({"params": part, "weight_decay": g["weight_decay"], "lr": lr * g["lr_scale"] * mult})
    return out


def to_memory_format(module: torch.nn.Module, channels_last: bool) -> torch.memory_format:
    """`pretrain.channels_last`: put `module`'s convolution weights in NHWC, which oneDNN's CPU convolutions run
    faster (the MCi's step 0.270 -> 0.178 s on an AVX-512 Xeon, benchmarks/train_step.py; level on an AVX2 EPYC),
    and return the memory format its image batches take. A no-op for 2-d weights (the text tower, a ViT's blocks).

    One exception stays NCHW: a strided 1x1 convolution with fewer than 16 input channels per group (the MCi
    stem's 3 -> 32 shortcut). oneDNN's NHWC 1x1 backward-weights kernel writes past its stride-reduction buffer
    when the input channels are fewer than its channel block (8 on AVX2, 16 on AVX-512; uxlfoundation/oneDNN
    #6035): with torch 2.14.1 on an AVX2 CPU the first backward step aborts with heap corruption. Its input and
    output are converted around it (forward hooks: the state dict and the arithmetic are unchanged)."""
    if not channels_last:
        return torch.contiguous_format
    module.to(memory_format=torch.channels_last)
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and max(conv.stride) > 1 \
                and conv.in_channels // conv.groups < 16:
            conv.to(memory_format=torch.contiguous_format)
            conv.register_forward_pre_hook(_nchw_input)
            conv.register_forward_hook(_nhwc_output)
    return torch.channels_last


def _nchw_input(conv: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def _nhwc_output(conv: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.contiguous(memory_format=torch.channels_last)


class EpochBatches:
    """Endless batches of indices into n samples: epochs of a seeded permutation, drawn from `gen` only when
    the previous epoch runs out (so other draws from `gen` between batches keep their order). `order`, the
    current epoch's indices not yet drawn, with `gen`'s state, is the position a checkpoint saves."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.order: list[int] = []

    def __iter__(self) -> "EpochBatches":
        return self

    def __next__(self) -> list[int]:
        if len(self.order) < self.batch_size:
            self.order += torch.randperm(self.n, generator=self.gen).tolist()
        batch, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return batch


def cost_estimate(what: str, seconds_per_step: float, steps_left: int) -> str:
    """The line a long loop prints after its first measured steps: s/step and the time the rest will take."""
    t = seconds_per_step * steps_left
    left = f"{t:.0f} s" if t < 120 else f"{t / 60:.0f} min" if t < 7200 else f"{t / 3600:.1f} h"
    return f"{what}: {seconds_per_step:.2f} s/step measured; the {steps_left} steps left need about {left}"


class StepTimer:
    """Times two steps after the first (which pays for warm-up) and returns the cost line once, at the third
    step after `start`; call `after_step(step)` with the number of steps done."""

    def __init__(self, what: str, start: int, total: int) -> None:
        self.what, self.start, self.total, self.t = what, start, total, time.time()

    def after_step(self, step: int) -> str | None:
        if step == self.start + 1:
            self.t = time.time()
        elif step == self.start + 3 and step < self.total:
            return cost_estimate(self.what, (time.time() - self.t) / 2, self.total - step)
        return None


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, params, grad_clip: float) -> None:
    """The end of every qclip training step, after backward: clip the gradients' global norm to `grad_clip`
    (0 = no clipping; each stage's `grad_clip` setting), step the optimiser, then the schedule."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()


def adamw(groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the kernel (CPU and CUDA float tensors): the same update as the default
    per-tensor loop (to float rounding) in one kernel; on a 2-core CPU the loop was ~13% of a tiny CLIP step."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_lambda(warmup: int, total: int, base_lr: float, min_lr: float, schedule: str = "cosine"):
    """Linear warm-up over `warmup` steps, then cosine decay to `min_lr`, or `schedule="poly"`: mmsegmentation's
    PolyLR at power 1 (linear decay to `min_lr` at `total`)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "poly":
            return (min_lr + (base_lr - min_lr) * (1 - progress)) / base_lr
        return (min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))) / base_lr
    return f


# ---------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()),
                                                      *np_state[2:]], "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    random.setstate(state["python"])


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, step: int, keep: int = 2,
                    extra: dict | None = None) -> None:
    """extra: the loop's own state beside the model's (tensors, lists, numbers; `load_checkpoint(extra=...)`
    reads it back)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights, state = ckpt_dir / f"step_{step:08d}.safetensors", ckpt_dir / f"step_{step:08d}.state.pt"
    save_weights(unwrap(model).state_dict(), weights)
    atomic_write_bytes(state, torch_save_bytes({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                                "step": step, "rng": _rng_state(), "extra": extra or {}}))
    atomic_write_json(ckpt_dir / "latest.json", {"step": step, "weights": weights.name, "state": state.name})
    prune_checkpoints(ckpt_dir, max(1, keep))


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; with 0, none (a finished run: its model folder is what stays)."""
    if keep == 0:
        (ckpt_dir / "latest.json").unlink(missing_ok=True)  # first: never a pointer to deleted files
    files = sorted(ckpt_dir.glob("step_*.safetensors"))
    for w in files[:len(files) - keep]:
        w.unlink(missing_ok=True)
        w.with_name(w.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, extra: dict | None = None) -> int:
    """Restore the latest checkpoint; returns its step (0 when there is none). `extra`, when given, is filled
    with the loop's own state saved beside it (`save_checkpoint(extra=...)`)."""
    latest = ckpt_dir / "latest.json"
    if not latest.is_file():
        return 0
    info = json.loads(latest.read_text())
    unwrap(model).load_state_dict(load_weights(ckpt_dir / info["weights"]))
    state = torch.load(ckpt_dir / info["state"], map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    if extra is not None:
        extra.update(state.get("extra", {}))
    return int(state["step"])


def drop_checkpoints_of_other_settings(ckpt_dir: Path, run_key: dict) -> None:
    """Checkpoints resume only the settings that wrote them: `ckpt_dir` is removed when its run_key.json records
    other settings (the caller then records `run_key` there before its first checkpoint)."""
    recorded = ckpt_dir / "run_key.json"
    if recorded.is_file() and read_json_or_none(recorded) != json.loads(json.dumps(run_key)):
        remove_tree(ckpt_dir)
