"""The study's non-CLIP baselines, trained on the same pool images with the same steps, batch and schedule as
CLIP pretraining (`pretrain.*`), so methods differ only in their training signal:

- `supervised`: the image tower + a linear classifier, multi-label BCE on the objects (colour x shape) that are
  visible in each image, read from the world's scene graph — the analogue of ImageNet-supervised pretraining.
- `boxes`: the image tower + a 1x1 conv on its deepest map, per-cell cross-entropy on a grid of 16-px cells
  labelled with the shape of the object box that covers the cell's centre (else background), on the curated
  split's boxes: the object boxes the captioner's region head learns from, given to the encoder directly. No
  crop augmentation (the targets must stay aligned with the pixels).
- `mim`: masked image modeling. For ViTs (open_clip's VisionTransformer) it is MAE (He et al., 2022): 75% of
  the patch tokens are dropped, the encoder sees the rest, a one-block decoder with mask tokens predicts every
  patch's pixels (normalised per patch), MSE on the dropped patches. Hierarchical towers (MCi/FastViT) cannot
  drop tokens, so they get SimMIM (Xie et al., 2022): random 8x8 patches of the input are replaced by zeros
  (the normalised mean), a 1x1 conv + pixel shuffle on the deepest feature map predicts the pixels, L1 loss
  on the masked pixels only. With `pretrain.mim_hierarchical=spark` they get SparK (Tian et al., 2023), masked
  modeling built for convolutions: the masked cells are kept empty (zero) after the stem and every stage whose
  cells lie inside one masked square (dense convolutions standing in for sparse ones, as SparK and ConvNeXt V2's
  FCMAE do), and a light UNet decoder merges every level top-down, masked cells filled with a learned mask token
  per level, to predict each masked square's pixels normalised per square (MSE). `summary.json` records which
  (`objective`).

Every baseline sees the same images through the same random-resized-crop transform as CLIP pretraining
(`preprocess_train`), and with `pretrain.require_raw_caption` the same subset of the pool.

A killed run resumes from `OUT/checkpoints` (every `pretrain.checkpoint_every` steps) to the uninterrupted
run's weights. The result is an ordinary qclip model folder (`OUT/model`, the whole CLIP model with an untouched
text tower), so `qclip transfer --encoder OUT` reads baselines and CLIP runs alike.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..atomic import atomic_write_json, remove_tree
from ..config import STUDY_METHODS, Config, result_keys
from ..data.shards import ShardReader
from ..data.world import COLOURS, SHAPES
from ..data.world_shards import world_shapes
from ..distributed import barrier, init_distributed, mean_over_ranks, rank, rank_slice, sync_batchnorm, world_size
from ..models import create_clip
from ..models.checkpoint import save_model_dir
from ..models.dense_encoder import DenseEncoder
from ..optim import (
    EpochBatches,
    adamw,
    drop_checkpoints_of_other_settings,
    load_checkpoint,
    lr_lambda,
    optimizer_step,
    param_groups,
    prune_checkpoints,
    save_checkpoint,
    to_memory_format,
)
from ..provenance import write_run_info
from .shard_dataset import seeded_cpu_rng

METHODS = tuple(m.name for m in STUDY_METHODS.values() if m.kind == "baseline")
@functools.lru_cache(maxsize=None)  # read once per labelled image: one list per world, not per image
def object_classes(shapes: tuple[str, ...] = SHAPES) -> tuple[tuple[str, str], ...]:
    """The supervised baseline's classes: (colour, shape) pairs, 32 in the default world."""
    return tuple((c, s) for c in COLOURS for s in shapes)


MASK_RATIO = 0.6  # SimMIM's ratio for its ViT setting
MAE_MASK_RATIO = 0.75  # MAE's


def object_labels(scene: dict, shapes: tuple[str, ...] = SHAPES) -> np.ndarray:
    classes = object_classes(shapes)
    y = np.zeros(len(classes), np.float32)
    for o in scene["objects"]:
        if o["visible"]:
            y[classes.index((o["colour"], o["shape"]))] = 1.0
    return y


BOX_CELL = 16  # px: the `boxes` baseline's grid cell


def box_targets(scene: dict, size: int, shapes: tuple[str, ...] = SHAPES) -> np.ndarray:
    """(size/16)^2 grid of class ids: 1 + the shape index of the visible object whose box covers the cell's
    centre (the smaller box where boxes overlap: it is the one in front more often), 0 for background."""
    g = size // BOX_CELL
    y = np.zeros((g, g), np.int64)
    centres = np.arange(g) * BOX_CELL + BOX_CELL / 2
    objs = [o for o in scene["objects"] if o["visible"] and o.get("bbox")]
    for o in sorted(objs, key=lambda o: -(o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1])):
        x0, y0, x1, y1 = o["bbox"]
        rows = (centres >= y0) & (centres < y1)
        cols = (centres >= x0) & (centres < x1)
        y[np.ix_(rows, cols)] = 1 + shapes.index(o["shape"])
    return y


def _load_pool(data: str | Path, labels_of: str, require_raw: bool, size: int = 64,
               shapes: tuple[str, ...] = SHAPES) -> tuple[list, torch.Tensor | None]:
    """Every image of a split, decoded once (the world is small: 10k RGB 64x64 images = 120 MB), and its labels:
    `labels_of` "objects" (multi-label), "boxes" (a grid of class ids) or "" (none).
    require_raw: only images with raw alt-text, as `pretrain.require_raw_caption` makes CLIP pretraining do."""
    from .shard_dataset import has_raw_caption

    images, labels = [], []
    for s in ShardReader(data):
        if require_raw and not has_raw_caption(s.meta):
            continue
        images.append(s.pil().convert("RGB"))
        if labels_of:
            scene = s.meta.get("scene")
            if scene is None:
                raise ValueError(f"{data}: sample {s.key} has no scene graph; the {labels_of} baseline needs world "
                                 f"data")
            labels.append(object_labels(scene, shapes) if labels_of == "objects" else box_targets(scene, size, shapes))
    return images, (torch.from_numpy(np.stack(labels)) if labels_of else None)


def augmented_batch(images: list, idx: list[int], transform, seed: int) -> torch.Tensor:
    """The batch through CLIP pretraining's own train transform (open_clip's random-resized crop), drawn from
    `seed`: baselines see the same augmentation as CLIP runs, and a seed gives the same crops."""
    with seeded_cpu_rng(seed):
        return torch.stack([transform(images[i]) for i in idx])


class SimMIMDecoder(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(channels, 3 * stride * stride, 1)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.proj(feat), self.stride)


class SparKDecoder(nn.Module):
    """SparK's hierarchical decoder: each level "densified" (its masked cells set to a learned mask token, then a
    1x1 projection), merged top-down from the deepest (upsample, add, 3x3 conv block), pixels predicted at the
    finest level's stride by a 1x1 conv + pixel shuffle."""

    def __init__(self, channels: list[int], reductions: list[int], width: int = 64) -> None:
        super().__init__()
        self.stride = reductions[0]
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels])
        for t in self.mask_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        self.densify = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                                   nn.BatchNorm2d(width), nn.ReLU6()) for _ in channels])
        self.pred = nn.Conv2d(width, 3 * self.stride * self.stride, 1)

    def forward(self, feats: list[torch.Tensor], visible: list[torch.Tensor | None]) -> torch.Tensor:
        x = None
        for i in reversed(range(len(feats))):
            f = feats[i]
            if visible[i] is not None:  # a level whose cells each lie inside one square: fill the masked ones
                f = f * visible[i] + self.mask_tokens[i] * (1 - visible[i])
            f = self.densify[i](f)
            x = f if x is None else F.interpolate(x, size=f.shape[-2:], mode="nearest") + f
            x = self.blocks[i](x)
        return F.pixel_shuffle(self.pred(x), self.stride)


def cell_visibility(mask: torch.Tensor, reductions: list[int], patch: int) -> list[torch.Tensor | None]:
    """Per level, (n, 1, h, w) with 1 where the cell is visible, for levels whose stride divides the masked
    square's side (each cell inside one square); None for coarser levels, whose cells mix masked and visible."""
    return [1 - F.max_pool2d(mask, r) if patch % r == 0 else None for r in reductions]


def sparse_stage_hooks(visual: nn.Module, reductions: list[int], patch: int, state: dict) -> list:
    """Forward hooks that zero the masked cells of the stem's and each fine stage's output (`state["visible"]`,
    the current batch's `cell_visibility`): SparK's sparse convolution, emulated on a dense tower. Returns the
    handles."""
    trunk = getattr(visual, "trunk", visual)
    if not (hasattr(trunk, "stem") and hasattr(trunk, "stages") and len(trunk.stages) == len(reductions)):
        raise ValueError(f"pretrain.mim_hierarchical=spark needs a timm tower with `stem` and one `stages` entry per "
                         f"level ({type(trunk).__name__} has not); use pretrain.mim_hierarchical=simmim")

    def hook(level: int, name: str):
        def zero_masked(module: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
            visible = state["visible"][level]
            if visible.shape[-2:] != out.shape[-2:]:  # a mask at the wrong stride would hide the wrong cells
                raise ValueError(f"pretrain.mim_hierarchical=spark: the tower's {name} outputs "
                                 f"{tuple(out.shape[-2:])} cells, but level {level} (stride {reductions[level]}) has "
                                 f"{tuple(visible.shape[-2:])}; SparK needs the stem at the first stage's stride. "
                                 f"Use pretrain.mim_hierarchical=simmim for this tower")
            return out * visible.to(out.dtype)
        return zero_masked

    # the stem is masked at level 0's stride: true of FastViT/MCi and ConvNeXt, checked at the first forward
    modules = [(trunk.stem, 0, "stem")] + [(m, i, f"stage {i}") for i, m in enumerate(trunk.stages)]
    return [m.register_forward_hook(hook(i, name)) for m, i, name in modules if patch % reductions[i] == 0]


def is_open_clip_vit(visual: nn.Module) -> bool:
    return all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding", "transformer"))


class MAEDecoder(nn.Module):
    """MAE's decoder: encoded visible tokens and mask tokens, each at its position -> pixels of every patch."""

    def __init__(self, width: int, patch: int, grid: int, dec_width: int = 64, depth: int = 1) -> None:
        super().__init__()
        self.embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dec_width) * 0.02)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(dec_width, max(1, dec_width // 32), 4 * dec_width,
                                                                 dropout=0.0, activation="gelu", batch_first=True,
                                                                 norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dec_width)
        self.pred = nn.Linear(dec_width, patch * patch * 3)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.embed(visible)
        b, d = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(b, self.pos.shape[1], d).scatter(1, keep[..., None].expand(-1, -1, d), x)
        return self.pred(self.norm(self.blocks(full + self.pos)))


def mae_encode(visual: nn.Module, x: torch.Tensor, ratio: float, gen: torch.Generator,
               rows: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip ViT forward on a random `1 - ratio` of the patch tokens: (encoded visible tokens, their indices).
    rows=(lo, hi, B): `x` is rows lo..hi of a batch of B (a rank's share): the draw is the whole batch's."""
    t = visual.conv1(x).flatten(2).transpose(1, 2)  # B x N x W (patch embedding or qclip's conv stem)
    pos = visual.positional_embedding.to(t.dtype)
    t = t + pos[1:]
    b, n, w = t.shape
    lo, hi, full = rows or (0, b, b)
    noise = torch.rand(full, n, generator=gen)[lo:hi].to(t.device)
    keep = noise.argsort(1)[:, : max(1, round(n * (1 - ratio)))]
    t = t.gather(1, keep[..., None].expand(-1, -1, w))
    cls = (visual.class_embedding + pos[0]).expand(b, 1, w)
    t = visual.ln_post(visual.transformer(visual.ln_pre(torch.cat([cls, t], 1))))
    return t[:, 1:], keep


def normalised_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """MAE's and SparK's target: each patch's pixels less their mean, over their standard deviation."""
    t = patchify(x, patch)
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """B x 3 x H x W -> B x N x (patch * patch * 3), patches in row-major order as the ViT's tokens."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_patch_mask(n: int, size: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) with 1 = masked, in `patch` x `patch` blocks."""
    if size % patch:
        raise ValueError(f"pretrain.mim_mask_patch = {patch} does not divide the image size {size}")
    g = size // patch
    m = (torch.rand(n, 1, g, g, generator=gen) < MASK_RATIO).float()
    return F.interpolate(m, scale_factor=patch, mode="nearest")


def train_baseline(cfg: Config, method: str, data: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Under torchrun: data-parallel over the ranks. Each step's batch and its random draws (crops, masks) are
    the one-process run's; rank r trains on its r-th slice, BatchNorm over the global batch, gradients averaged
    over the ranks (an all-reduce after backward: the objectives call the tower's parts one by one, which DDP's
    forward wrapper would not see); rank 0 writes checkpoints and the model, every rank resumes."""
    if method not in METHODS:
        raise ValueError(f"baseline must be one of {', '.join(METHODS)}, got '{method}'")
    tc, out, t0 = cfg.pretrain, Path(out), time.time()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ddp = world_size() > 1
    device = init_distributed()[2]  # the rank's GPU under torchrun, else the GPU or the CPU
    main = rank() == 0
    progress = progress and main
    torch.manual_seed(cfg.seed)
    bundle = create_clip(tc.model, tc.text_tower, tc.image_size, device=device)
    model = bundle.model
    size = bundle.model_cfg["vision_cfg"]["image_size"]
    encoder = DenseEncoder(model.visual, f"random:{tc.model}", tc.model, size, levels=1)
    objective = method
    shapes = world_shapes(data)
    if method == "supervised":
        head: nn.Module = nn.Linear(bundle.model_cfg["embed_dim"], len(object_classes(shapes)))
    elif method == "boxes":
        head = nn.Conv2d(encoder.info.channels[-1], 1 + len(shapes), 1)
    elif is_open_clip_vit(model.visual):
        objective, patch = "mae", bundle.model_cfg["vision_cfg"]["patch_size"]
        head = MAEDecoder(model.visual.transformer.width, patch, size // patch)
    elif tc.mim_hierarchical == "spark":
        objective, mask_state = "spark", {}
        encoder = DenseEncoder(model.visual, f"random:{tc.model}", tc.model, size, levels=4)
        head = SparKDecoder(encoder.info.channels, encoder.info.reductions)
        hooks = sparse_stage_hooks(model.visual, encoder.info.reductions, tc.mim_mask_patch, mask_state)
    else:
        objective = "simmim"
        head = SimMIMDecoder(encoder.info.channels[-1], encoder.info.reductions[-1])
    labels_of = {"supervised": "objects", "boxes": "boxes"}.get(method, "")
    # the curated split has no alt-text to require; box targets must stay aligned with the pixels: no crops
    images, labels = _load_pool(data, labels_of, tc.require_raw_caption and method != "boxes", size, shapes)
    labels = labels.to(device) if labels is not None else None
    transform = bundle.preprocess_val if method == "boxes" else bundle.preprocess_train
    params = sync_batchnorm(nn.ModuleList([model.visual, head.to(device)]), device)
    image_format = to_memory_format(params, tc.channels_last)  # as pretraining (pretrain.channels_last)
    opt = adamw(param_groups(params, tc.weight_decay), tc.lr, (tc.beta1, tc.beta2), tc.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.steps, tc.lr, tc.min_lr))
    if main:
        write_run_info(out, cfg, f"baseline-{method}", {"data": str(data), "samples": len(images),
                                                        "world_size": world_size(), "device": str(device),
                                                        "augmentation": "none (box targets)" if method == "boxes"
                                                        else "preprocess_train (as CLIP pretraining)"})
    gen = torch.Generator().manual_seed(cfg.seed)
    # pretrain.batch_size is per rank, as for CLIP: the global batch drawn each step is W times it
    batches = EpochBatches(len(images), min(tc.batch_size * world_size(), len(images)), gen)
    metrics: list[dict] = []
    # a killed run resumes from its latest training state: weights, optimiser, schedule, RNG, the batch position
    # (`batches.order` and `gen`, which also draws the masks) and the losses so far; crops are drawn per step
    # from the seed, so the resumed run ends where an uninterrupted one does. Checkpoints of other settings go.
    ckpt_dir, run_key = out / "checkpoints", {"method": method, "data": str(data), "seed": cfg.seed,
                                              "pretrain": result_keys(tc, text_tower=False, masked=method == "mim")}
    if ddp:  # a resumed run needs as many ranks: each holds its slice of every batch
        run_key["world_size"] = world_size()
    if main:
        drop_checkpoints_of_other_settings(ckpt_dir, run_key)
        atomic_write_json(ckpt_dir / "run_key.json", run_key)
    barrier()
    extra: dict = {}
    start = load_checkpoint(ckpt_dir, params, opt, sched, extra)
    if start:
        gen.set_state(extra["gen"])
        batches.order, metrics = list(extra["order"]), list(extra["metrics"])
        if main:
            print(f"pretrain {method} ({objective}): resuming at step {start} of {tc.steps} from {ckpt_dir}")
    params.train()
    bar = tqdm(range(start, tc.steps), desc=f"pretrain {method}", unit="step", disable=not progress,
               initial=start, total=tc.steps)
    for step in bar:
        idx = next(batches)
        b = len(idx)
        lo, hi = rank_slice(b) if ddp else (0, b)
        x = augmented_batch(images, idx, transform, cfg.seed * 1_000_003 + step)[lo:hi]
        x = x.to(device).contiguous(memory_format=image_format)
        if method == "supervised":
            loss = F.binary_cross_entropy_with_logits(head(model.visual(x)), labels[idx][lo:hi])
        elif method == "boxes":
            target = labels[idx][lo:hi]
            logits = F.interpolate(head(encoder(x)[-1]), size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target)
        elif objective == "mae":
            visible, keep = mae_encode(model.visual, x, MAE_MASK_RATIO, gen, (lo, hi, b))
            target = normalised_patches(x, patch)
            masked = torch.ones(target.shape[:2], device=device).scatter(1, keep, 0.0)  # 1 = dropped
            loss = (((head(visible, keep) - target) ** 2).mean(-1) * masked).sum() / mean_over_ranks(masked.sum())
        elif objective == "spark":
            mask = random_patch_mask(b, size, tc.mim_mask_patch, gen)[lo:hi].to(device)
            # computed once a step: the hooks and the decoder read the same per-level visibility
            mask_state["visible"] = cell_visibility(mask, encoder.info.reductions, tc.mim_mask_patch)
            pred = head(encoder(x * (1 - mask)), mask_state["visible"])
            target = normalised_patches(x, tc.mim_mask_patch)
            masked = patchify(mask, tc.mim_mask_patch)[..., 0]  # 1 = a masked square
            err = ((patchify(pred, tc.mim_mask_patch) - target) ** 2).mean(-1)
            loss = (err * masked).sum() / mean_over_ranks(masked.sum()).clamp(min=1)
        else:
            mask = random_patch_mask(b, size, tc.mim_mask_patch, gen)[lo:hi].to(device)
            pred = head(encoder(x * (1 - mask))[-1])
            loss = ((pred - x).abs() * mask).sum() / (mean_over_ranks(mask.sum()) * 3 + 1e-6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = mean_over_ranks(loss)  # the loss logged is the whole batch's
        if ddp:  # every rank steps with the gradient of the whole batch
            for p in params.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world_size()
        optimizer_step(opt, sched, params.parameters(), tc.grad_clip)
        metrics.append({"step": step + 1, "loss": value.item()})
        bar.set_postfix(loss=f"{value.item():.3f}")
        if (step + 1) % tc.checkpoint_every == 0 and step + 1 < tc.steps:
            if main:
                save_checkpoint(ckpt_dir, params, opt, sched, step + 1, keep=max(2, tc.keep_checkpoints),
                                extra={"gen": gen.get_state(), "order": batches.order, "metrics": metrics})
            barrier()
    if objective == "spark":
        for h in hooks:  # the saved tower is an ordinary dense one
            h.remove()
    summary = {"method": method, "objective": objective, "model": tc.model, "steps": tc.steps, "first_loss": metrics[0]["loss"],
               "final_loss": metrics[-1]["loss"], "seconds": round(time.time() - t0, 2), "model_dir": str(out / "model")}
    if main:
        save_model_dir(model, bundle.model_cfg, bundle.preprocess_cfg, out / "model", bundle.qclip_cfg)
        with open(out / "metrics.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)
        atomic_write_json(out / "summary.json", summary)
        prune_checkpoints(ckpt_dir, tc.keep_checkpoints)  # as CLIP pretraining: the model folder is what stays
        if not tc.keep_checkpoints:
            remove_tree(ckpt_dir)
    barrier()
    return summary
