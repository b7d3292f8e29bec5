"""CLIP pretraining: one loop, readable top to bottom.

Single process:  qclip pretrain --data DATA --out RUN pretrain.steps=400
Many processes:  torchrun --nproc-per-node N -m qclip pretrain --data DATA --out RUN  (gloo on CPU, nccl on GPU)

Outputs in RUN/: config.yaml, run.json, metrics.jsonl, tb/ (TensorBoard), checkpoints/ (every
`checkpoint_every` steps: safetensors weights + a state file, named by `checkpoints/latest.json`, written
last so a crash never leaves a half checkpoint in charge), and model/ (open_clip `local-dir:` folder).
Re-running the same command after a kill resumes from the latest checkpoint and ends with the same weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..atomic import atomic_write_json, remove_tree
from ..config import PERFORMANCE_KEYS, Config, ConfigError, PretrainConfig, result_keys, to_dict
from ..data.policy import CaptionPolicy
from ..distributed import init_distributed
from ..models import create_clip
from ..models.checkpoint import save_model_dir, unwrap
from ..models.factory import resolve_model_cfg
from ..optim import (
    StepTimer,
    adamw,
    load_checkpoint,
    lr_lambda,
    optimizer_step,
    param_groups,
    prune_checkpoints,
    save_checkpoint,
    to_memory_format,
)
from ..provenance import take_output_folder, write_run_info
from .losses import build_loss, contrastive_loss
from .shard_dataset import ClipShardDataset, TrainDataError, make_loader, steps_per_epoch

# ---------------------------------------------------------------------------------------------------
# what a run folder was started with: a resume must continue the same run

RUN_KEY = "run_key.json"


def run_key(cfg: Config, data: str | Path, world: int) -> dict:
    # "train": the key older run folders were written with (kept, so they resume); "model": the model's config by
    # content, so a preset edited in place is a different run (older folders lack it and are not compared on it)
    # "data_manifest": the data by content (its manifest: per-shard counts and sha256), so another dataset put at
    # the same path is not resumed on (older folders lack it and are not compared on it)
    tc = cfg.pretrain
    manifest = Path(data) / "manifest.json"
    return {"train": result_keys(tc), "model": resolve_model_cfg(tc.model, tc.text_tower, tc.image_size)[1],
            "data": str(Path(data).resolve()), "seed": cfg.seed, "world_size": world,
            "data_manifest": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None}


def clip_param_groups(model: torch.nn.Module, tc: PretrainConfig) -> list[dict]:
    """param_groups, with the text tower (everything outside `visual.` but the logit scale / bias) at
    lr x text_lr_mult; at 1.0 the two groups that older checkpoints hold."""
    groups = param_groups(model, tc.weight_decay)
    if tc.text_lr_mult == 1.0:
        return groups
    text = {id(p) for n, p in model.named_parameters() if not n.startswith("visual.") and "logit_" not in n}
    out = []
    for g in groups:
        for is_text in (False, True):
            params = [p for p in g["params"] if (id(p) in text) == is_text]
            if params:
                out.append({**g, "params": params, "lr": tc.lr * (tc.text_lr_mult if is_text else 1.0)})
    return out


def synthetic_caption_ids(data: str | Path, max_samples: int = 200) -> list[str]:
    """The captioner ids a dataset's synthetic captions are stored under (read from its first samples)."""
    from ..data.shards import ShardReader

    ids: set[str] = set()
    for i, s in enumerate(ShardReader(data)):
        ids.update(k for k, v in (s.captions.get("synthetic") or {}).items() if v)
        if i + 1 >= max_samples:
            break
    return sorted(ids)


def check_resume(ckpt_dir: Path, key: dict) -> None:
    """Refuse to resume a run folder started with other settings, naming the keys that differ."""
    f = ckpt_dir / RUN_KEY
    if not has_run(ckpt_dir.parent) or not f.is_file():  # nothing trained yet: nothing to mix
        return
    old = json.loads(f.read_text())
    diff = [f"pretrain.{k}: {old['train'].get(k)!r} -> {key['train'].get(k)!r}"
            for k in sorted(set(old["train"]) | set(key["train"])) if old["train"].get(k) != key["train"].get(k)]
    diff += [f"{k}: {old.get(k)!r} -> {key.get(k)!r}" for k in ("data", "seed", "world_size") if old.get(k) != key.get(k)]
    if "model" in old and old["model"] != key["model"]:
        diff.append(f"the config of model {key['train'].get('model')!r} changed")
    if old.get("data_manifest") and old["data_manifest"] != key.get("data_manifest"):
        diff.append(f"the dataset at {key['data']} is another one than the run started on (its manifest.json "
                    f"differs: replaced or rewritten since)")
    if diff:
        raise ConfigError(f"{ckpt_dir.parent} holds a run started with other settings ({'; '.join(diff)}); "
                          f"resuming would mix the two. Pass a new --out, or --fresh to start this one afresh "
                          f"(performance-only keys may change: {', '.join('pretrain.' + k for k in PERFORMANCE_KEYS)})")


def _wandb_run(cfg: Config, out: Path):
    """A Weights & Biases run beside TensorBoard when `pretrain.wandb_project` is set (off by default); wandb's own
    settings apply (WANDB_MODE=offline logs to RUN/wandb without the network). Resumes with the run folder."""
    if not cfg.pretrain.wandb_project:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("pretrain.wandb_project is set but wandb is not installed: pip install wandb") from None
    run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]  # one W&B run per run folder
    return wandb.init(project=cfg.pretrain.wandb_project, name=out.name, id=run_id, resume="allow", dir=str(out),
                      config=to_dict(cfg), tags=["qclip", "pretrain"], reinit="finish_previous")


# what `qclip pretrain` writes into a run folder: all that --fresh removes (nothing else in the folder is touched)
RUN_OUTPUTS = ("checkpoints", "model", "tb", "wandb", "summary.json", "metrics.jsonl", "config.yaml", "run.json")


def start_fresh(out: Path) -> list[str]:
    """Remove a previous run's outputs from `out` (only the names pretraining writes); returns what was removed."""
    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def has_run(out: Path) -> bool:
    return (out / "checkpoints" / "latest.json").is_file() or (out / "summary.json").is_file()


# ---------------------------------------------------------------------------------------------------
# the loop


def chance_loss(loss: str, batch: int) -> float:
    """The loss of an encoder that tells no pair in a batch apart (a reference for "did it learn"): CLIP's
    softmax loss is then ln B; SigLIP's sigmoid loss, at the best bias (every pair at probability 1/B), is
    -ln(1/B) - (B - 1) ln(1 - 1/B), about ln B + 1."""
    if loss == "siglip":
        return -math.log(1 / batch) - (batch - 1) * math.log1p(-1 / batch)
    return math.log(batch)


def logged_losses(run_dir: str | Path) -> list[dict]:
    """The logged points of a pretraining folder's metrics.jsonl (this loop writes it) that carry a `loss` (CLIP or
    a baseline's objective), in order; [] without the file."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        return []
    pts = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [p for p in pts if "loss" in p]


def late_loss(losses: list[float]) -> float:
    """The mean of the last fifth of a run's logged losses: where a run ended, which its last batch alone says
    too noisily (a CLIP run's last logged batch read 0.99 where this mean read 0.45)."""
    late = losses[-max(1, len(losses) // 5):]
    return sum(late) / len(late)


def pretrain(cfg: Config, data: str | Path, out: str | Path, progress: bool = True, start_mode: str = "auto") -> dict:
    """start_mode: "auto" resumes a run folder started with the same settings (else starts); "resume" fails when
    there is nothing to resume; "fresh" first removes a previous run's outputs (`RUN_OUTPUTS`) from `out`."""
    t_start = time.time()
    tc = cfg.pretrain
    rank, world, device = init_distributed()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(out)
    is_main = rank == 0
    if start_mode == "resume" and not has_run(out):
        raise ConfigError(f"--resume: {out} holds no pretraining checkpoint to resume (drop --resume to start it)")
    key = run_key(cfg, data, world)  # resolves the model: an unknown one fails here, before any folder exists
    take_output_folder(out, "pretrain")  # a user's folder is refused here, before --fresh removes anything
    if start_mode == "fresh":
        if is_main and start_fresh(out):
            print(f"pretrain: --fresh: removed the previous run's outputs from {out}")
        if world > 1:
            dist.barrier()
    # settled before anything is built: a finished run returns at once, a changed one fails at once
    check_resume(out / "checkpoints", key)
    if (out / "summary.json").is_file() and (out / "model").is_dir() and (out / "checkpoints" / RUN_KEY).is_file():
        done = json.loads((out / "summary.json").read_text())
        if done.get("steps") == tc.steps:  # finished with these settings: nothing to do, nothing overwritten
            if is_main:
                print(f"pretrain: {out} already finished {tc.steps} steps with these settings (late loss "
                      f"{done.get('late_loss', done.get('final_loss', float('nan'))):.3f}); model in {out / 'model'}")
            return done
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # model, transforms, tokenizer: open_clip's factory
    # SigLIP's initial temperature and bias, as open_clip_train sets them with --siglip (Zhai et al. 2023: t = 10,
    # b = -10, so that the many negatives start near zero probability)
    extra = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if tc.loss == "siglip" else {}
    bundle = create_clip(tc.model, tc.text_tower, tc.image_size, tc.pretrained or None, device=device,
                         output_dict=True, **extra)
    model = bundle.model
    if tc.grad_checkpointing:
        model.set_grad_checkpointing(True)
    image_format = to_memory_format(model, tc.channels_last)  # 4-d weights only: the text tower is unchanged

    # data: this rank's shards, the caption policy applied when indexing
    policy = CaptionPolicy.parse(tc.caption_policy)
    distill = tc.distill_weight > 0
    # rank_data=global: every rank indexes the whole dataset and takes its slice of each global batch
    sliced = tc.rank_data == "global" and world > 1
    ds = ClipShardDataset(data, policy, bundle.preprocess_train, bundle.tokenizer, cfg.seed,
                          0 if sliced else rank, 1 if sliced else world,
                          teacher=distill, cache_mb=tc.cache_mb, require_raw=tc.require_raw_caption)
    micro = tc.batch_size // tc.accum_steps
    spe = steps_per_epoch(len(ds), tc.batch_size * world, 1) if sliced else steps_per_epoch(len(ds), tc.batch_size,
                                                                                             world)
    if spe == 0:
        held = synthetic_caption_ids(data) if ds.skips.counts.get("no synthetic caption") else []
        if held and policy.captioner and policy.captioner not in held:
            raise TrainDataError(f"{data} holds no synthetic captions with id '{policy.captioner}' "
                                 f"(pretrain.caption_policy={tc.caption_policy}); its ids: {', '.join(held)} "
                                 f"(e.g. pretrain.caption_policy=synthetic:{held[0]})")
        raise TrainDataError(
            f"{data}: {len(ds)} usable samples on rank {rank} (policy '{tc.caption_policy}'; "
            f"dropped: {ds.skips.summary('kept', len(ds), len(ds) + ds.skips.total)}), fewer than one batch of "
            f"{tc.batch_size}; lower pretrain.batch_size or use more data"
        )

    if is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "checkpoints" / RUN_KEY, key)
    optimizer = adamw(clip_param_groups(model, tc), tc.lr, (tc.beta1, tc.beta2), tc.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.warmup_steps, tc.steps, tc.lr, tc.min_lr))
    start = load_checkpoint(out / "checkpoints", model, optimizer, scheduler)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd_model = torch.compile(model) if tc.compile else model
    loss_fn = build_loss(tc.loss, rank, world, tc.local_loss, tc.gather_with_grad, distill)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext

    shards_by_rank = [ds.shard_paths()]
    if world > 1:
        shards_by_rank = [None] * world
        dist.all_gather_object(shards_by_rank, ds.shard_paths())
    if is_main:
        write_run_info(out, cfg, "pretrain", {"data": str(data), "world_size": world, "resumed_from_step": start,
                                              "shards_by_rank": [[Path(p).name for p in r] for r in shards_by_rank],
                                              "usable_samples_rank0": len(ds), "dropped_rank0": ds.skips.as_dict(),
                                              "steps_per_epoch": spe})
        tb = SummaryWriter(str(out / "tb"))
        wandb_run = _wandb_run(cfg, out)
        metrics_f = open(out / "metrics.jsonl", "a", encoding="utf-8")
        print(f"pretrain: {tc.model}, policy {tc.caption_policy}, {len(ds):,} samples on rank 0 "
              f"({ds.skips.summary('usable', len(ds), len(ds) + ds.skips.total)}), {world} rank(s) x batch "
              f"{tc.batch_size}, {tc.steps} steps ({tc.steps / spe:.1f} epochs)"
              + (f", resuming at step {start}" if start else ""))
    loader = make_loader(ds, micro, spe * tc.accum_steps, tc.steps * tc.accum_steps, cfg.seed, rank,
                         start * tc.accum_steps, tc.workers, (rank, world) if sliced else None)

    def features(images: torch.Tensor, texts: torch.Tensor) -> dict:
        with autocast():
            return fwd_model(image=images.contiguous(memory_format=image_format), text=texts.flatten(0, 1))

    def loss_of(out_: dict, img: torch.Tensor, txt: torch.Tensor, teacher: dict | None) -> torch.Tensor:
        return contrastive_loss(loss_fn, img.float(), txt.float(), policy.num_texts, out_["logit_scale"].float(),
                                out_.get("logit_bias"), teacher, tc.distill_weight)

    bar = tqdm(total=tc.steps, initial=start, desc="pretrain", unit="step", disable=not (progress and is_main))
    model.train()
    step, window_t, window_n, last_loss = start, time.time(), 0, float("nan")
    timer = StepTimer("pretrain", start, tc.steps)  # the first step pays for warm-up: it times two after it
    batches = iter(loader)
    while step < tc.steps:
        t0 = time.time()
        parts = [{k: v.to(device, non_blocking=True) for k, v in next(batches).items()} for _ in range(tc.accum_steps)]
        t_data = time.time() - t0
        teacher = None
        if distill:  # teacher features of the whole step's batch, in micro-batch order
            teacher = {"image": torch.cat([p["teacher_image"] for p in parts]),
                       "text": torch.cat([p["teacher_text"] for p in parts]), "scale": parts[0]["teacher_scale"]}
        optimizer.zero_grad(set_to_none=True)
        if tc.accum_steps == 1:
            o = features(parts[0]["images"], parts[0]["texts"])
            loss = loss_of(o, o["image_features"], o["text_features"], teacher)
            loss.backward()
        else:
            # open_clip's accum_freq: cache every micro-batch's features, then recompute one micro-batch at a
            # time with gradients, so each loss sees the whole batch as negatives
            with torch.no_grad():
                cached = [features(p["images"], p["texts"]) for p in parts]
            for j, p in enumerate(parts):
                sync = contextlib.nullcontext() if (world == 1 or j == len(parts) - 1) else model.no_sync()
                with sync:
                    o = features(p["images"], p["texts"])
                    img = torch.cat([c["image_features"] for c in cached[:j]] + [o["image_features"]]
                                    + [c["image_features"] for c in cached[j + 1:]])
                    txt = torch.cat([c["text_features"] for c in cached[:j]] + [o["text_features"]]
                                    + [c["text_features"] for c in cached[j + 1:]])
                    loss = loss_of(o, img, txt, teacher)
                    loss.backward()
        optimizer_step(optimizer, scheduler, model.parameters(), tc.grad_clip)
        with torch.no_grad():  # as CLIP: the temperature may not exceed 100
            unwrap(model).logit_scale.clamp_(0, math.log(100))
        step += 1
        window_n += tc.batch_size * world
        last_loss = loss.item()
        bar.update(1)
        cost = timer.after_step(step)
        if cost and is_main:
            tqdm.write(cost)

        if is_main and (step % tc.log_every == 0 or step == tc.steps):
            dt = time.time() - window_t
            rec = {"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0],
                   "logit_scale": unwrap(model).logit_scale.exp().item(), "images_per_s": window_n / dt,
                   "data_s": t_data, "epoch": step / spe}
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
            for k, v in rec.items():
                if k != "step":
                    tb.add_scalar(f"train/{k}", v, step)
            if wandb_run is not None:
                wandb_run.log({f"train/{k}": v for k, v in rec.items() if k != "step"}, step=step)
            bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{rec['images_per_s']:.0f}")
            window_t, window_n = time.time(), 0
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            if is_main:
                save_checkpoint(out / "checkpoints", model, optimizer, scheduler, step,
                                keep=max(2, tc.keep_checkpoints))
            if world > 1:
                dist.barrier()
    bar.close()

    summary = {"steps": step, "final_loss": last_loss, "world_size": world, "seconds": round(time.time() - t_start, 2),
               "model_dir": str(out / "model")}
    if is_main:
        save_model_dir(model, bundle.model_cfg, bundle.preprocess_cfg, out / "model", bundle.qclip_cfg)
        metrics_f.close()
        summary["late_loss"] = late_loss([p["loss"] for p in logged_losses(out)] or [last_loss])
        tb.close()
        if wandb_run is not None:
            wandb_run.summary.update({"final_loss": last_loss, "late_loss": summary["late_loss"], "steps": step})
            wandb_run.finish()
        atomic_write_json(out / "summary.json", summary)
        prune_checkpoints(out / "checkpoints", tc.keep_checkpoints)  # finished: RUN/model is the result
        chance = chance_loss(tc.loss, tc.batch_size * world)
        print(f"pretrain: {step} steps, loss over the last fifth {summary['late_loss']:.3f} (last batch "
              f"{last_loss:.3f}; chance {chance:.3f}), {summary['seconds']:.0f}s; model in {out / 'model'}")
    if world > 1:
        dist.barrier()
    return summary
