"""`qclip transfer`: an image encoder -> segmentation or depth, probe or fine-tune, at nested data fractions.

Read top to bottom: open the train/val splits, build the encoder once, then for each data fraction train a fresh
head (and, fine-tuning, a fresh copy of the encoder) for the same number of iterations and evaluate on the whole
validation split. Probing never changes the encoder, so the train and validation features are computed once per
run, already stacked as the probe head's first (parameter-free) step, and cached in memory when they fit
(`transfer.max_cached_feature_gb`): every fraction's head then trains and is evaluated on cached tensors; with a
`FeatureMemo` (the study passes one per encoder) the next task on the same encoder and images reuses them.
Runs on a GPU when there is one (`transfer.device`, bf16 autocast); with `transfer.checkpoint_every` a fraction
resumes from its latest checkpoint (OUT/<task>-<mode>-f<fraction>/checkpoints).
Writes OUT/metrics.json (all fractions), OUT/<task>-<mode>-f<fraction>/{metrics.json,predictions.npz} (and
predictions.png, the drawn grid, at the largest fraction), and the resolved config + versions (config.yaml, run.json).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..config import Config, ConfigError
from ..distributed import (
    barrier,
    init_distributed,
    is_distributed,
    mean_over_ranks,
    rank,
    rank_slice,
    sync_batchnorm,
    world_size,
)
from ..optim import (
    EpochBatches,
    StepTimer,
    adamw,
    drop_checkpoints_of_other_settings,
    layer_decay_param_groups,
    load_checkpoint,
    lr_lambda,
    optimizer_step,
    param_groups,
    save_checkpoint,
)
from ..provenance import take_output_folder, write_run_info
from .dataset import (
    TransferDataset,
    collate,
    infer_num_classes,
    open_transfer_splits,
)
from ..models.dense_encoder import prefix_group_matcher
from .encoders import DenseEncoder, load_encoder
from .fractions import nested_subset
from .heads import DenseHead, LinearProbeHead
from .inference import predict
from .losses import depth_loss, segmentation_loss
from .metrics import HEADLINE, DepthMetric, SegmentationMetric
from .visualize import save_examples, save_prediction_grid


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device):
    # bf16 on GPUs, as pretraining's precision=auto; CPU stays fp32
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class FeatureMemo:
    """Frozen probe inputs of one encoder, per set of input images, kept between `run_transfer` calls: the study
    probes segmentation and then depth with the same encoder on the same images, and the second task reads the
    first's features (the same tensors) instead of encoding every image again. Holds one encoder at a time."""

    def __init__(self) -> None:
        self.encoder_key: str | None = None
        self.features: dict[str, list[list[torch.Tensor]]] = {}

    def lookup(self, encoder_key: str, images_key: str) -> list[list[torch.Tensor]] | None:
        return self.features.get(images_key) if encoder_key == self.encoder_key else None

    def store(self, encoder_key: str, images_key: str, features: list[list[torch.Tensor]]) -> None:
        if encoder_key != self.encoder_key:  # another encoder: the old one's features go
            self.encoder_key, self.features = encoder_key, {}
        self.features[images_key] = features

    @staticmethod
    def encoder_key(encoder: DenseEncoder) -> str:
        h = hashlib.sha1(repr((type(encoder.tower).__name__, encoder.info.__dict__)).encode())
        for name, t in encoder.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


@torch.no_grad()
def _feature_batches(encoder: DenseEncoder, ds: TransferDataset, batch_size: int, workers: int,
                     device: torch.device, memo: FeatureMemo | None = None) -> list[tuple[list[torch.Tensor], dict]]:
    """Frozen probe inputs (the levels stacked as `LinearProbeHead.stack` does, on the CPU) of every batch of
    `ds` in order, each beside its batch without the images (the memory bound counts features only; `evaluate`
    re-reads the few images it shows). With `memo`, features already computed for the same encoder and images
    are reused and only the targets are read."""
    encoder.eval()
    keys = (FeatureMemo.encoder_key(encoder), f"{ds.fingerprint()}:{batch_size}:{device}") if memo else None
    known = memo.lookup(*keys) if memo else None
    if known is not None:
        targets = copy.copy(ds)
        targets.images = False
        batches = list(DataLoader(targets, batch_size=batch_size, collate_fn=collate, num_workers=workers))
        return list(zip(known, batches))
    out = []
    for b in DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=workers):
        with _autocast(device):
            feats = LinearProbeHead.stack(encoder(b.pop("image").to(device)))
        out.append(([f.float().cpu() for f in feats], b))
    if memo:
        memo.store(*keys, [f for f, _ in out])
    return out


def _features(encoder: DenseEncoder, ds: TransferDataset, batch_size: int, workers: int,
              device: torch.device, memo: FeatureMemo | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Frozen probe inputs of every sample and the training targets beside them."""
    parts = _feature_batches(encoder, ds, batch_size, workers, device, memo)
    return [torch.cat([f[0] for f, _ in parts])], torch.cat([b["target"] for _, b in parts])


def _feature_gb(encoder: DenseEncoder, n: int, size: int) -> float:
    """Memory of `n` samples' stacked probe inputs: every level at the finest level's resolution."""
    return n * sum(encoder.info.channels) * (size // min(encoder.info.reductions)) ** 2 * 4 / 1e9


def _loss(cfg, out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """The training loss (fp32) of the head's output; (main, auxiliary) logits as mmseg adds their losses:
    main + transfer.aux_loss_weight x auxiliary."""
    if isinstance(out, tuple):
        return _loss(cfg, out[0], target) + cfg.aux_loss_weight * _loss(cfg, out[1], target)
    if cfg.task == "segmentation":
        return segmentation_loss(out.float(), target)
    return depth_loss(out.float(), target, cfg.depth_loss, cfg.min_depth)


@torch.no_grad()
def evaluate_head(encoder: DenseEncoder, head: DenseHead, val: TransferDataset, cfg, num_classes: int,
             n_examples: int = 4, cached: list[tuple[list[torch.Tensor], dict]] | None = None,
             sharded: bool = False) -> tuple[dict, list[dict]]:
    """Metrics on the whole validation split at each target's own resolution, by the protocol of `cfg`
    (transfer.eval_mode whole | slide, eval_scales, eval_flip; `inference.predict`).
    `cached`: the split's frozen probe inputs from `_feature_batches` (the encoder then does not run; whole-image
    protocol without flips only).
    `sharded` (under torchrun): rank r evaluates images r, r+W, ...; the metric's sums are then added over the
    ranks (intersections and unions, per-image depth errors), never per-rank results averaged."""
    encoder.eval()
    head.eval()
    device = next(head.parameters()).device
    if sharded:
        val = copy.copy(val)
        val.indices = val.indices[rank()::world_size()]
    metric = (SegmentationMetric(num_classes, class_names=val.ds.class_names, stuff_classes=val.ds.stuff_classes)
              if cfg.task == "segmentation"
              else DepthMetric(cfg.min_depth, cfg.max_depth, cfg.eigen_crop))

    def forward(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with _autocast(device):
            return head(encoder(x), size)

    examples, start = [], 0  # start: the batch's first index in `val`
    if cached is None:
        cached = ((None, b) for b in DataLoader(val, batch_size=cfg.eval_batch_size, collate_fn=collate,
                                                num_workers=cfg.workers))
    for feats, b in cached:
        targets = b["target"]
        per_image = isinstance(targets, list) or isinstance(b.get("image"), list) or cfg.eval_mode == "slide"
        if per_image:  # targets (or images) of different sizes: one image at a time
            parts = [(i, slice(i, i + 1), t[None]) for i, t in enumerate(targets)]
        else:
            parts = [(0, slice(None), targets)]
        for first, sl, target in parts:
            size = tuple(target.shape[-2:])
            if feats is not None:  # frozen probe inputs: the head alone
                with _autocast(device):
                    out = head([f[sl].to(device) for f in feats], size).float().cpu()
            else:
                images = b["image"][sl] if torch.is_tensor(b["image"]) else b["image"][first][None]
                out = predict(forward, images, size, cfg, cfg.task, device)
            pred = out.argmax(1) if cfg.task == "segmentation" else out
            metric.update(pred, target)
            for j in range(min(len(pred), n_examples - len(examples))):
                img = b["image"][first + j] if "image" in b else val[start + first + j]["image"]
                img = (img * val.std + val.mean).clamp(0, 1)
                img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True)[0] \
                    if tuple(img.shape[-2:]) != size and val.native else img
                examples.append({"image": (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                                 "target": target[j].numpy(), "pred": pred[j].numpy()})
        start += len(b["key"])
    if sharded:
        metric.reduce_across_ranks()
    return metric.compute(), examples


class EncoderWithHead(nn.Module):
    """The fine-tuned network as one module, so DistributedDataParallel sees (and synchronises) both parts."""

    def __init__(self, encoder: DenseEncoder, head: DenseHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.head(self.encoder(x), size)

    def group_matcher(self, coarse: bool = False) -> dict:
        """The encoder's layer groups (stem, blocks); the head, matched by none, groups last (timm's rule)."""
        return prefix_group_matcher(self.encoder.group_matcher(coarse), "encoder.")


def optimizer_groups(net: EncoderWithHead, cfg) -> list[dict]:
    """AdamW parameter groups of a head (lr) and, fine-tuning, its encoder (lr x encoder_lr_mult), each split by
    weight decay; with transfer.layer_decay < 1 the encoder's layers decay as timm's param_groups_layer_decay."""
    if cfg.mode == "finetune" and cfg.layer_decay < 1:
        return layer_decay_param_groups(net, net.encoder, cfg.lr, cfg.weight_decay, cfg.layer_decay,
                                        cfg.encoder_lr_mult)
    groups = [{**g, "lr": cfg.lr} for g in param_groups(net.head, cfg.weight_decay)]
    if cfg.mode == "finetune":
        groups += [{**g, "lr": cfg.lr * cfg.encoder_lr_mult} for g in param_groups(net.encoder, cfg.weight_decay)]
    return groups


def train_head(encoder: DenseEncoder, train: TransferDataset, cfg, num_classes: int, seed: int,
               cached: tuple[list[torch.Tensor], torch.Tensor] | None, progress: bool,
               desc: str, ckpt_dir: Path | None = None) -> tuple[DenseHead, list[float]]:
    """Train a fresh head (and, fine-tuning, the encoder) for `cfg.steps` iterations. With `ckpt_dir` and
    `cfg.checkpoint_every`, saves head, encoder, optimizer, schedule and RNG there and resumes from the latest:
    the same batches follow; random crops in loader workers are re-drawn, so a resumed run is close, not equal.

    Fine-tuning under torchrun (DDP): `cfg.batch_size` is the global batch; each step's batch is drawn as in one
    process and rank r trains on its r-th slice (as mmsegmentation's 8 GPUs x 2 images = 16), BatchNorm
    statistics are those of the global batch (SyncBatchNorm), gradients are averaged by DDP; rank 0 writes the
    checkpoints, every rank resumes from them."""
    torch.manual_seed(seed)
    device = next(encoder.parameters()).device
    finetune = cfg.mode == "finetune"
    ddp = finetune and is_distributed()
    aux_level = 2 if (finetune and cfg.task == "segmentation" and cfg.aux_loss_weight > 0) else -1
    head = DenseHead(encoder.info.channels, encoder.info.plain, cfg.task, cfg.mode, num_classes,
                     cfg.decoder_width, cfg.depth_bins, cfg.min_depth, cfg.max_depth, cfg.bin_spacing,
                     aux_level=aux_level).to(device)
    if ddp:  # before the optimizer sees the parameters: the synchronised layers replace the plain ones
        head, encoder = sync_batchnorm(head, device), sync_batchnorm(encoder, device)
    net = EncoderWithHead(encoder, head)
    groups = optimizer_groups(net, cfg)
    opt = adamw(groups, cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.lr, 0.0,
                                                             cfg.schedule))
    gen = torch.Generator().manual_seed(seed)
    flip_gen = torch.Generator().manual_seed(seed + 1)
    bs = min(cfg.batch_size, len(train))
    batches = list(itertools.islice(EpochBatches(len(train), bs, gen), cfg.steps))
    losses: list[float] = []
    # one module for checkpoints: the encoder only when it trains
    trained = nn.ModuleDict({"head": head, **({"encoder": encoder} if finetune else {})})
    start = 0
    if ckpt_dir is not None and cfg.checkpoint_every:
        if ddp:
            barrier()  # rank 0 may have dropped checkpoints of other settings
        start = load_checkpoint(ckpt_dir, trained, opt, sched)
        if start:
            losses = json.loads((ckpt_dir / "losses.json").read_text())[:start]
            for _ in range(start):  # the flips already drawn
                torch.rand(bs, generator=flip_gen)
            batches = batches[start:]
    size = (cfg.image_size, cfg.image_size)
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, unit="it", disable=not progress, leave=False)
    encoder.train(finetune)
    if not finetune:
        encoder.requires_grad_(False)
    head.train()
    if cached is not None:  # frozen features: no image flip (it is not a feature flip for ViTs)
        data = (([f[idx] for f in cached[0]], cached[1][idx]) for idx in batches)
    else:  # decode + augment in `transfer.workers` processes while the model trains
        lo, hi = rank_slice(bs) if ddp else (0, bs)
        loader = DataLoader(train, batch_sampler=[b[lo:hi] for b in batches], collate_fn=collate,
                            num_workers=cfg.workers, prefetch_factor=4 if cfg.workers else None)
        data = ((b["image"], b["target"]) for b in loader)
    if ddp:  # find_unused_parameters: towers keep layers the dense features never reach (a CLIP projection)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)
    if cfg.compile and finetune:
        net = torch.compile(net)
    timer = StepTimer(desc, start, cfg.steps)
    for x, target in data:
        x = [f.to(device) for f in x] if cached is not None else x.to(device)
        target = target.to(device)
        if cached is None:
            flip = ((torch.rand(bs, generator=flip_gen) < 0.5) if cfg.hflip else torch.zeros(bs, dtype=torch.bool))
            flip = flip[lo:hi].to(device)  # the whole batch's draw, this rank's slice of it
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            target = torch.where(flip.view(-1, *[1] * (target.dim() - 1)), target.flip(-1), target)
        with _autocast(device):
            if cached is not None:  # a probe on frozen features
                out = head(x, size)
            elif finetune:
                out = net(x, size)
            else:
                with torch.no_grad():
                    feats = encoder(x)
                out = head(feats, size)
            loss = _loss(cfg, out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(opt, sched, [p for g in groups for p in g["params"]], cfg.grad_clip)
        # the logged loss is the global batch's: the mean of the ranks' means (DDP averages gradients so)
        losses.append((mean_over_ranks(loss) if ddp else loss).item())
        if not math.isfinite(losses[-1]):  # NaN stays NaN: stop now, not after the remaining steps
            bar.close()
            raise FloatingPointError(f"{desc}: the loss diverged at step {len(losses)} ({losses[-1]}); lower "
                                     f"transfer.lr (fine-tuning: also transfer.encoder_lr_mult)")
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        step = len(losses)
        cost = timer.after_step(step)
        if cost and finetune:  # fine-tuning can take hours on a CPU: say so
            tqdm.write(cost)
        if ckpt_dir is not None and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            if rank() == 0 or not ddp:
                atomic_write_json(ckpt_dir / "losses.json", losses)
                save_checkpoint(ckpt_dir, trained, opt, sched, step)
            if ddp:
                barrier()
    bar.close()
    return head, losses


CONVERGED_MAX_DROP_PCT = 5.0  # a probe whose loss still falls more than this over its last fifth had not converged


def convergence(losses: list[float]) -> dict:
    """How much the training loss still fell over the last fifth of the steps (mean of its second half against
    mean of its first half, which smooths batch noise): a probe that still falls by more than
    CONVERGED_MAX_DROP_PCT percent there had not converged, and its metric says more about the schedule than
    about the features."""
    n = len(losses)
    k = max(1, n // 10)
    if n < 10:
        return {"loss_drop_last_fifth_pct": None, "converged": None}
    start, end = losses[n - 2 * k:n - k], losses[n - k:]
    a, b = sum(start) / len(start), sum(end) / len(end)
    drop = (a - b) / abs(a) * 100 if a else 0.0
    return {"loss_drop_last_fifth_pct": round(drop, 3), "converged": drop <= CONVERGED_MAX_DROP_PCT}


def schedule_warning(t) -> str | None:
    """What is wrong with a schedule whose warm-up outlasts it (a long recipe cut short by `transfer.steps` alone,
    e.g. ADE20k's 1,500 warm-up steps in a 200-step run): the learning rate never reaches transfer.lr, and the
    head learns next to nothing."""
    if t.warmup_steps >= t.steps > 0:
        return (f"transfer: warning: transfer.warmup_steps={t.warmup_steps} >= transfer.steps={t.steps}: the learning "
                f"rate never reaches transfer.lr={t.lr:g} (it ends at {t.lr * t.steps / max(t.warmup_steps, 1):.2g}); "
                f"set transfer.warmup_steps to a tenth of the steps or less")
    return None


_WARNED: set[str] = set()  # each schedule warning once per process (a study transfers many encoders alike)


def run_transfer(cfg: Config, encoder_spec: str, data: str | Path, out: str | Path, progress: bool = True,
                 memo: FeatureMemo | None = None) -> dict:
    """memo: share frozen probe features with other calls on the same encoder and images (see FeatureMemo)."""
    t, out, t0 = cfg.transfer, Path(out), time.time()
    warning = schedule_warning(t)
    if warning and warning not in _WARNED and rank() == 0:
        _WARNED.add(warning)
        print(warning, flush=True)
    if t.threads:
        torch.set_num_threads(t.threads)
    layout, train_ds, val_ds, select_ds = open_transfer_splits(data, t)
    splits = {role: {"split": ds.split, "samples": len(ds)}
              for role, ds in (("train", train_ds), ("val", val_ds), ("select", select_ds)) if ds is not None}
    num_classes = infer_num_classes(train_ds) if t.task == "segmentation" else 0
    ddp = t.mode == "finetune" and world_size() > 1
    if world_size() > 1 and t.mode == "probe" and not is_distributed():
        raise ConfigError("a probe trains a small head on frozen features in one process: run `qclip transfer` "
                          "without torchrun for transfer.mode=probe (fine-tuning runs DDP under torchrun)")
    device = init_distributed()[2] if ddp else resolve_device(t.device)
    main = not ddp or rank() == 0  # under DDP every rank trains and evaluates its share; rank 0 writes
    progress = progress and main
    torch.manual_seed(cfg.seed)  # a random:ARCH encoder is the same random encoder on every run
    encoder = load_encoder(encoder_spec, t.image_size, t.level_indices or t.levels).to(device)
    init_state = copy.deepcopy(encoder.state_dict()) if t.mode == "finetune" else None
    info = encoder.info
    take_output_folder(out, "transfer")  # after every input has opened: a bad one leaves no folder
    if main:
        write_run_info(out, cfg, "transfer", {"encoder": encoder_spec, "data": str(data), "layout": layout,
                                              "device": str(device), "splits": splits,
                                              "world_size": world_size() if ddp else 1,
                                              "train": train_ds.summary(), "val": val_ds.summary()})
    val = TransferDataset.for_transfer(val_ds, list(range(len(val_ds))), t, info.mean, info.std, train=False)
    full = TransferDataset(train_ds, list(range(len(train_ds))), t.image_size, info.mean, info.std, train=True)
    scales = tuple(t.scale_range)
    # frozen probe features stand for the images only where the network sees each image once, as it is
    cacheable = t.mode == "probe" and t.eval_mode == "whole" and not t.eval_flip
    cached, cached_val = None, None
    if t.mode == "probe" and scales == (1.0, 1.0) and _feature_gb(encoder, len(full), t.image_size) <= t.max_cached_feature_gb:
        cached = _features(encoder, full, t.eval_batch_size, t.workers, device, memo)  # once for all fractions
    if cacheable and _feature_gb(encoder, len(val), t.image_size) <= t.max_cached_feature_gb:
        cached_val = _feature_batches(encoder, val, t.eval_batch_size, t.workers, device, memo)
    select, cached_select = None, None
    if select_ds is not None:
        select = TransferDataset.for_transfer(select_ds, list(range(len(select_ds))), t, info.mean, info.std,
                                              train=False)
        if cacheable and _feature_gb(encoder, len(select), t.image_size) <= t.max_cached_feature_gb:
            cached_select = _feature_batches(encoder, select, t.eval_batch_size, t.workers, device, memo)
    results = []
    for frac in sorted(t.data_fractions):
        idx = nested_subset(len(train_ds), frac, cfg.seed)
        name = f"{t.task}-{t.mode}-f{frac:g}"
        if init_state is not None:
            encoder.load_state_dict(init_state)
        sub = TransferDataset.for_transfer(train_ds, idx, t, info.mean, info.std, train=True)
        ckpt_dir = out / name / "checkpoints"
        run_key = {"encoder": encoder_spec, "data": str(data), "seed": cfg.seed, "transfer": asdict(t)}
        if ddp:  # a resumed DDP run must have as many ranks (each holds its slice of every batch)
            run_key["world_size"] = world_size()
        if main:
            drop_checkpoints_of_other_settings(ckpt_dir, run_key)  # another setting's: start afresh, never resume
            if t.checkpoint_every:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(ckpt_dir / "run_key.json", run_key)
        t1 = time.time()
        sub_cached = ([c[idx] for c in cached[0]], cached[1][idx]) if cached else None
        selection = None
        if select is None:
            head, losses = train_head(encoder, sub, t, num_classes, cfg.seed, sub_cached, progress,
                                      f"{name} ({len(idx)} imgs)", ckpt_dir)
        else:  # a head per weight decay; the best on the selection split is the one evaluated on val
            key, sign = HEADLINE[t.task]
            grid = []
            for wd in t.probe_weight_decays:
                h, l = train_head(encoder, sub, replace(t, weight_decay=wd), num_classes, cfg.seed,
                                  sub_cached, progress, f"{name} wd {wd:g} ({len(idx)} imgs)")
                m, _ = evaluate_head(encoder, h, select, t, num_classes, cached=cached_select)
                grid.append({"weight_decay": wd, key: m[key], "head": h, "losses": l})
            best = max(grid, key=lambda g: sign * g[key])
            head, losses = best["head"], best["losses"]
            selection = {"split": t.select_split, "metric": key, "weight_decay": best["weight_decay"],
                         "grid": [{k: g[k] for k in ("weight_decay", key)} for g in grid]}
        metrics, examples = evaluate_head(encoder, head, val, t, num_classes, cached=cached_val, sharded=ddp)
        run = {"encoder": encoder_spec, "task": t.task, "mode": t.mode, "data_fraction": frac,
               "train_samples": len(idx), "val_samples": len(val_ds), "final_train_loss": losses[-1],
               **convergence(losses),
               "seconds": round(time.time() - t1, 2), "metrics": metrics,
               **({"probe_selection": selection} if selection else {})}
        results.append(run)
        if not main:
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / name / "metrics.json", {**run, "splits": splits,
                                                        "train_loss": losses[::max(1, len(losses) // 100)]})
        if frac == max(t.data_fractions):  # one picture per run (matplotlib: ~0.7 s a grid, a study draws dozens)
            save_prediction_grid(examples, t.task, out / name / "predictions.png",
                                 f"{encoder_spec} | {name} | {HEADLINE[t.task][0]} "
                                 f"{metrics.get(HEADLINE[t.task][0], 0):.3f}",
                                 num_classes, getattr(val.ds, "class_names", None))
        save_examples(examples, out / name / "predictions.npz")  # every fraction's, for the report's comparisons
    summary = {"encoder": encoder_spec, "encoder_info": info.__dict__, "task": t.task, "mode": t.mode,
               "layout": layout, "splits": splits, "num_classes": num_classes, "results": results,
               "skipped": {"train": train_ds.skips.as_dict(), "val": val_ds.skips.as_dict()},
               "seconds": round(time.time() - t0, 2)}
    if main:
        atomic_write_json(out / "metrics.json", summary)
    if ddp:
        barrier()
    return summary


def format_summary(s: dict) -> str:
    key = HEADLINE[s["task"]][0]
    parts = [f"{r['data_fraction']:g}: {key} {r['metrics'].get(key, float('nan')):.4f}" for r in s["results"]]
    sp = s.get("splits") or {}
    on = ", ".join(f"{role} '{v['split']}' {v['samples']}" for role, v in sp.items())
    line = (f"transfer {s['encoder']} -> {s['task']} ({s['mode']})" + (f" [{on}]" if on else "") + ": "
            + ", ".join(parts) + f" ({s['seconds']:.0f}s)")
    return line + ("\n" + class_table(s["results"][-1]) if s["results"] and "IoU_per_class" in s["results"][-1]["metrics"]
                   else "")


def class_table(result: dict) -> str:
    """Per-class IoU of one result, one class per row (as mmsegmentation prints after evaluation)."""
    m = result["metrics"]
    ious = m["IoU_per_class"]
    names = m.get("class_names") or [str(i) for i in range(len(ious))]
    width = max(8, *(len(n) for n in names))
    rows = [f"per-class IoU with {result['data_fraction']:.0%} of the labels:", f"  {'class':<{width}}  IoU"]
    rows += [f"  {n:<{width}}  {'-' if v is None else f'{v:.4f}'}" for n, v in zip(names, ious)]
    if "object_mIoU" in m:
        rows.append(f"  {'objects':<{width}}  {m['object_mIoU']:.4f}  (object-class mIoU: background classes "
                    f"left out)")
    return "\n".join(rows)
