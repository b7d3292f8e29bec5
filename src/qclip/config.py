"""Dataclass configs loaded from YAML, with dotted command-line overrides.

One tree (`Config`) describes a whole study; each stage reads its own section. Unknown keys and wrong
types are errors that name the key and list the valid ones, so a typo never silently runs the default.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key and the fix."""


# the default world's object shapes (data.world.SHAPES; config must not import data, tests/test_layers.py)
DEFAULT_SHAPES = ("cube", "sphere", "cylinder", "cone")


@dataclass
class WorldConfig:
    """The embedded procedural world (`qclip world`): sizes of each split and how noisy alt-text is."""

    image_size: int = 64
    n_pool: int = 10000  # alt-text only: what CLIP pretrains on
    n_curated: int = 5000  # reference descriptions + object boxes: what the captioner trains on
    n_dense: int = 1000  # labelled (masks + depth) training set for the transfer stage
    n_dev: int = 300  # masks + depth, disjoint from val: budgets and probe settings are chosen here
    n_val: int = 500  # held out: dense evaluation and retrieval (the reported split)
    min_objects: int = 2
    max_objects: int = 4
    # object colours used (the first N of the world's 8): with few, colour alone rarely tells two scenes'
    # captions apart and CLIP must see shapes to match them
    colours: int = 8
    alt_text_relevance: float = 0.6  # probability that alt-text mentions something actually in the image
    # of that relevant alt-text, the share that names the setting (floor, wall) and not the objects, as much web
    # alt-text is about the page or the scene rather than what is in it: an easy cue that carries no shapes
    alt_text_context: float = 0.0
    # shapes that alt-text never names (its writers name the biggest of the other objects), while the reference
    # descriptions name every visible object: web alt-text covers fewer classes than a full caption does
    alt_text_unnamed: list[str] = field(default_factory=list)
    # the object shapes of this world, from the renderer's eight (data.world.ALL_SHAPES: these four and pillar,
    # dome, disc, wedge); segmentation class ids follow this order after floor and wall
    shapes: list[str] = field(default_factory=lambda: list(DEFAULT_SHAPES))
    descriptions_per_image: int = 5  # reference descriptions per curated image, as COCO has 5
    shard_size: int = 1000
    image_format: str = "png"  # png (lossless) or jpg
    workers: int = 2  # processes generating shards in parallel


@dataclass
class IngestConfig:
    """Limits applied by every importer; a sample that breaks one is skipped and counted."""

    shard_size: int = 1000
    max_bad_fraction: float = 0.05  # above this the stage fails and leaves no dataset behind
    min_image_side: int = 8
    max_image_pixels: int = 64_000_000  # decompression-bomb guard
    max_caption_chars: int = 2000


@dataclass
class PretrainConfig:
    """CLIP pretraining (`qclip pretrain`). Batch size is per rank, as in open_clip_train."""

    model: str = "qclip-vit-tiny"  # open_clip config, qclip preset, or timm:<name>
    text_tower: str = ""  # open_clip config whose text tower pairs with a timm image tower (ViT-B-16 if empty)
    image_size: int = 0  # 0: the model config's
    pretrained: str = ""  # open_clip pretrained tag or weights file to start from
    caption_policy: str = "raw"  # raw | reference | synthetic[:ID] | mix:P[:ID] | both[:ID] | filter:T[:SCORER]
    # keep only images that have raw alt-text, whatever the policy or baseline: the study sets it, so every
    # method trains on the very images clip-raw can use (recaptioning then adds no images, only better text)
    require_raw_caption: bool = False
    loss: str = "clip"  # clip | siglip
    distill_weight: float = 0.0  # λ in λ·KD + (1-λ)·CLIP; > 0 needs teacher embeddings (qclip teacher)
    local_loss: bool = False
    gather_with_grad: bool = True
    # how ranks share the data under torchrun: shards (rank r reads shards r, r+W, ...: webdataset's split_by_node,
    # what scales) | global (every rank indexes every shard and takes its slice of each global batch, as
    # DistributedSampler: W ranks x batch B see the very batches of 1 process x batch W*B)
    rank_data: str = "shards"
    batch_size: int = 128
    accum_steps: int = 1  # micro-batches per step; features are cached so the loss sees the whole batch
    steps: int = 400
    lr: float = 1e-3
    # a from-scratch text tower can sit at chance at an lr its image tower needs (benchmarks/RESULTS.md)
    text_lr_mult: float = 1.0  # the text tower's lr as a multiple of pretrain.lr (image tower, logit scale: lr)
    min_lr: float = 0.0
    weight_decay: float = 0.1
    warmup_steps: int = 40
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0  # 0 disables
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    grad_checkpointing: bool = False
    # masked image modeling on a hierarchical tower (SimMIM, SparK): the side of a masked square in pixels, 60% masked
    mim_mask_patch: int = 8
    # masked image modeling for hierarchical towers (ViTs always get MAE): simmim (a 1x1 conv on the deepest map,
    # L1 on masked pixels) | spark (SparK: masked cells kept empty through the early stages, a light UNet over every
    # level with mask tokens, per-square normalised pixels; benchmarks/RESULTS.md, "SparK for the MCi")
    mim_hierarchical: str = "simmim"
    compile: bool = False
    # convolution weights and images in NHWC: an MCi step 0.270 -> 0.178 s on an AVX-512 Xeon's 2 cores, level on
    # an AVX2 EPYC's, a ViT's unchanged (benchmarks/train_step.py and its entry in benchmarks/RESULTS.md); as timm's
    # --channels-last. Strided 1x1 convolutions with few input channels stay NCHW (qclip.optim.to_memory_format)
    channels_last: bool = True
    workers: int = 2
    cache_mb: float = 512.0  # decoded images + tokenized captions kept per loader worker (a small dataset: once)
    checkpoint_every: int = 100  # a training state every N steps (CLIP runs and the study's baselines) to resume from
    keep_checkpoints: int = 0  # training states kept once the run has finished (0: only RUN/model; 2 while running)
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0: torch's default
    wandb_project: str = ""  # log to Weights & Biases too (pip install wandb; WANDB_MODE=offline works offline)


# pretrain.* keys that change how fast a run goes or what it keeps, never its result: a run may resume with other
# values, and the study's stage cache ignores them
PERFORMANCE_KEYS = ("workers", "cache_mb", "threads", "log_every", "checkpoint_every", "keep_checkpoints", "compile",
                    "channels_last", "wandb_project")


# pretrain.* keys added after runs were cached, with the value that reproduces those runs: at that value a key is
# left out of result_keys, so older stage caches and run folders keep matching
NEUTRAL_KEYS = {"text_lr_mult": 1.0, "mim_mask_patch": 8, "mim_hierarchical": "simmim", "rank_data": "shards"}


# pretrain.* keys that act on the text tower only: a tower trained without one (the baselines) ignores them.
# (`text_tower` predates this and stays in the baselines' keys, so their cached stages keep matching.)
TEXT_ONLY_KEYS = ("text_lr_mult",)

# pretrain.* keys that only masked image modeling reads: a CLIP run ignores them
MIM_ONLY_KEYS = ("mim_mask_patch", "mim_hierarchical")


# transfer.* keys added after transfer stages were cached, with the value that reproduces them (left out of the
# stage key at that value)
NEUTRAL_TRANSFER_KEYS = {"allow_shared_splits": False, "level_indices": [], "resize_scale": [], "cat_max_ratio": 1.0, "photometric": False,
                         "layer_decay": 1.0, "schedule": "cosine", "aux_loss_weight": 0.0,
                         "eval_mode": "whole", "eval_stride": 0, "eval_scales": [1.0], "eval_flip": False}
# transfer.* keys that change how fast a transfer runs, not what it computes
PERFORMANCE_TRANSFER_KEYS = ("compile",)


def transfer_result_keys(transfer: TransferConfig) -> dict:
    """The transfer.* settings a transfer stage's key hashes: without a probe grid, select_split is unused and
    both keys are left out (transfer stages cached before the grid existed keep matching)."""
    d = {k: v for k, v in dataclasses.asdict(transfer).items()
         if k not in PERFORMANCE_TRANSFER_KEYS and not (k in NEUTRAL_TRANSFER_KEYS and v == NEUTRAL_TRANSFER_KEYS[k])}
    if not transfer.probe_weight_decays:
        del d["probe_weight_decays"], d["select_split"]
    return d


# world.* keys added after worlds were cached, with the value that reproduces those worlds (left out of the
# world's key at that value, so older stage caches keep matching)
NEUTRAL_WORLD_KEYS = {"alt_text_context": 0.0, "alt_text_unnamed": [], "shapes": list(DEFAULT_SHAPES)}


def without_neutral_world_keys(d: dict) -> dict:
    """`d` (world settings: a WorldConfig's or a WorldSpec's fields) without NEUTRAL_WORLD_KEYS at their neutral value."""
    def neutral(k: str, v) -> bool:  # a WorldSpec holds lists as tuples
        return k in NEUTRAL_WORLD_KEYS and (list(v) if isinstance(v, tuple) else v) == NEUTRAL_WORLD_KEYS[k]

    return {k: v for k, v in d.items() if not neutral(k, v)}


def world_result_keys(world: WorldConfig) -> dict:
    """The world.* settings the world stage's key hashes: all of them but NEUTRAL_WORLD_KEYS at their neutral value."""
    return without_neutral_world_keys(dataclasses.asdict(world))


def result_keys(train: PretrainConfig, text_tower: bool = True, masked: bool = False) -> dict:
    """The pretrain.* settings that decide a pretraining's result (all but PERFORMANCE_KEYS): TEXT_ONLY_KEYS only
    for a run with a text tower (CLIP), MIM_ONLY_KEYS only for masked image modeling (`masked`)."""
    return {k: v for k, v in dataclasses.asdict(train).items()
            if k not in PERFORMANCE_KEYS and not (k in NEUTRAL_KEYS and v == NEUTRAL_KEYS[k])
            and (text_tower or k not in TEXT_ONLY_KEYS) and (masked or k not in MIM_ONLY_KEYS)}


@dataclass
class CaptionerConfig:
    """The in-repo CoCa captioner (`qclip caption train`): open_clip's CoCa at a CPU size, word vocabulary."""

    image_size: int = 64
    width: int = 64  # 128 named objects no better on the world, at about twice the step time
    vision_layers: int = 4
    patch_size: int = 8
    text_layers: int = 2
    decoder_layers: int = 2
    # False: the text decoder cross-attends to the patch tokens themselves (cheaper at 64 tokens than CoCa's
    # 256-query attentional pooler, and small objects stay in their own token)
    attentional_pool: bool = False
    vision_stem: str = "conv"  # conv (Xiao et al. 2021; learns shapes far faster at 64 px) | patch (open_clip's)
    context_length: int = 32
    batch_size: int = 64
    steps: int = 1000  # on the world, shapes are learned between steps 500 and 1000
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0  # global gradient norm; 0 disables
    caption_loss_weight: float = 2.0
    clip_loss_weight: float = 1.0
    # region supervision (captions/regions.py): object boxes + class from the scene graph, where samples have one
    region_loss_weight: float = 1.0
    workers: int = 2
    checkpoint_every: int = 200


@dataclass
class TransferConfig:
    """Dense transfer (`qclip transfer`): a head on the encoder's multi-level features, probe or fine-tune.

    Schedules are in iterations (as mmsegmentation's 160k), the same for every data fraction."""

    task: str = "segmentation"  # segmentation | depth
    mode: str = "probe"  # probe (frozen encoder, DINOv2 linear head) | finetune (whole encoder + pyramid decoder)
    data_fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    layout: str = "auto"  # auto | qclip | ade20k | voc | nyu | folder
    train_split: str = ""  # "" = the layout's default (world: dense; ade20k/voc/folder: train; nyu: train)
    val_split: str = ""  # "" = the layout's default (world: val; ade20k/voc/folder: val; nyu: test)
    image_size: int = 64  # square input; predictions are resized back to each target's own size
    levels: int = 4  # intermediate levels of the encoder (last blocks of a ViT, stages of a hierarchical one)
    # which blocks (0-based) give the levels instead, as mmseg's out_indices (its ViT-B: [3, 5, 7, 11]); [] = the
    # last `levels`
    level_indices: list[int] = field(default_factory=list)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3  # head
    encoder_lr_mult: float = 0.1  # finetune: encoder lr = lr * this
    weight_decay: float = 0.01
    # probe: a grid of weight decays, each fraction's best chosen on select_split (DINOv2's linear evaluation
    # trains a grid of heads and keeps the best on held-out data); [] = weight_decay alone, no selection
    probe_weight_decays: list[float] = field(default_factory=list)
    select_split: str = "dev"  # the held-out split the grid is chosen on; never the reported val_split
    warmup_steps: int = 20
    grad_clip: float = 3.0  # global gradient norm; 0 disables
    decoder_width: int = 128
    num_classes: int = 0  # 0 = from the dataset (world/ADE20k/VOC know theirs; folder: max id + 1)
    depth_loss: str = "silog"  # silog | l1log
    depth_bins: int = 256  # 0 = regress log depth directly: a convex linear probe, stable in a few hundred steps
    bin_spacing: str = "log"  # log | uniform
    min_depth: float = 1e-3
    max_depth: float = 10.0
    eigen_crop: bool = False  # NYUv2 evaluation crop (480x640 targets)
    hflip: bool = True  # training augmentation (masks and depth flip with the image)
    # [1, 1]: resize to image_size square; else mmseg's RandomResize (keep the aspect ratio within resize_scale x r,
    # r uniform in the range) + an image_size square RandomCrop
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # [long, short] bound of that resize and of sliding-window evaluation (mmseg's ADE20k: [2048, 512]);
    # [] = the short side at image_size, the long side unbounded
    resize_scale: list[int] = field(default_factory=list)
    cat_max_ratio: float = 1.0  # RandomCrop re-draws (up to 10 times) a crop one class fills more of; 1 = off
    photometric: bool = False  # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    # layer-wise lr decay (BEiT / MAE fine-tuning; timm's param_groups_layer_decay): encoder block i of N trains at
    # lr x encoder_lr_mult x layer_decay^(N + 1 - i), the head at lr; 1 = off
    layer_decay: float = 1.0
    schedule: str = "cosine"  # cosine | poly (mmseg's PolyLR, power 1), after linear warm-up
    aux_loss_weight: float = 0.0  # segmentation fine-tune: FCN auxiliary head on the third level (mmseg: 0.4)
    # evaluation: whole (the image resized to image_size square) | slide (resized within resize_scale, then
    # image_size windows at eval_stride, logits averaged where they overlap, as mmseg's slide_inference)
    eval_mode: str = "whole"
    eval_stride: int = 0  # slide: window stride; 0 = two thirds of image_size (mmseg's ViT configs: 341 of 512)
    eval_scales: list[float] = field(default_factory=lambda: [1.0])  # multi-scale testing: [0.5, 0.75, ..., 1.75]
    eval_flip: bool = False  # test-time flip: average with the flipped image's prediction
    compile: bool = False  # torch.compile the fine-tuned network (GPU)
    eval_batch_size: int = 64
    max_cached_feature_gb: float = 4.0  # probe: cache frozen features in memory when they fit
    workers: int = 0  # loader processes for decoding + augmentation (fine-tuning and evaluation)
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N; bf16 autocast on CUDA
    checkpoint_every: int = 0  # > 0: save every N iterations under RUN/<fraction>/checkpoints and resume there
    # train on the evaluation images: only when asked (a check, an overfitting test). Without it, train and
    # evaluation splits that share an image are refused before anything trains
    allow_shared_splits: bool = False


@dataclass
class DenseDataConfig:
    """One dense dataset of a study on your own data (`study.dense`): where it is, what it labels, which splits
    train, choose and report, and the transfer recipe it is fine-tuned or probed with."""

    name: str = ""  # how the report and results.json name it (e.g. ade20k, nyuv2)
    path: str = ""  # the dataset's root folder (relative paths: to the working directory)
    task: str = "segmentation"  # segmentation | depth
    layout: str = "auto"  # auto | ade20k | voc | nyu | folder | qclip
    train_split: str = ""  # "" = the layout's default (ade20k/voc/folder: train; nyu: train; qclip: dense)
    val_split: str = ""  # the reported split; "" = the layout's default (ade20k/voc/folder: val; nyu: test)
    select_split: str = ""  # held-out split a probe grid chooses on; never the reported one
    num_classes: int = 0  # 0 = the layout's (ADE20k 150, VOC 21) or max id + 1
    # the transfer recipe: a config file whose `transfer:` section applies (e.g. configs/transfer_ade20k_upernet.yaml;
    # relative paths: to the study config's folder, then the working directory), then these transfer.* overrides
    recipe: str = ""
    transfer: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    """`qclip run`: which encoders and methods to compare, on which tasks; every method gets the same pool
    images and the same `pretrain.*` budget. Methods: clip-raw, clip-synthetic, clip-mix (pretrain.caption_policy
    raw / synthetic / mix:mix_p), random (no pretraining), supervised (object labels), mim (MAE for ViTs,
    SimMIM or SparK for hierarchical towers: pretrain.mim_hierarchical)."""

    encoders: list[str] = field(default_factory=lambda: ["qclip-vit-tiny", "qclip-mci-tiny"])
    methods: list[str] = field(default_factory=lambda: ["clip-raw", "clip-synthetic", "clip-mix", "random",
                                                        "supervised", "mim"])
    tasks: list[str] = field(default_factory=lambda: ["segmentation", "depth"])
    mix_p: float = 0.8  # clip-mix: probability of a synthetic caption per sample (MobileCLIP / LaCLIP style)
    captions_per_image: int = 1
    caption_sampling: str = "beam"
    caption_beams: int = 2
    caption_batch_size: int = 128
    # the captioner that recaptions the pool: "" trains the in-repo CoCa (captioner.*) on world.curated; else one
    # to use as it is, as `qclip caption run --captioner` takes it: a captioner folder (local-dir:PATH, e.g. the
    # demo's assets/captioners/tiny), hf:NAME (BLIP, GIT, ...) or an open_clip CoCa with captioner_pretrained
    captioner: str = ""
    captioner_pretrained: str = ""
    seeds: int = 1  # >1: the whole study per seed (seed, seed+1, ...), results as mean +- std
    # per-encoder `pretrain.*` overrides, e.g. {qclip-mci-tiny: {steps: 200}}: every method of that encoder
    # (CLIP policies and baselines) gets the same overridden budget, so methods stay comparable per encoder
    encoder_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # --- your own data (all empty: the embedded world) ---
    # the image-text pool CLIP pretrains on: a qclip dataset (`qclip ingest ...` writes one); "" = the world's pool
    pool: str = ""
    # a qclip dataset with reference captions the in-repo captioner trains on when study.captioner is "";
    # "" = the world's curated split
    curated: str = ""
    # dense datasets to transfer to, each with its task, layout, splits and recipe; [] = the world's dense/val
    dense: list[DenseDataConfig] = field(default_factory=list)
    # baselines given as encoders instead of trained here, name -> any `qclip transfer --encoder` spec, e.g.
    # {mae: timm:vit_base_patch16_224.mae, supervised-in21k: timm:vit_base_patch16_224.augreg_in21k}
    given: dict[str, str] = field(default_factory=dict)
    # another run's results.json (or its study folder) whose seeds the report places this run's numbers among,
    # e.g. the committed five-seed headline for the one-seed demo; "" = none. Read by the report only: no stage
    # depends on it
    reference: str = ""


@dataclass
class Config:
    """A whole study. Stages read their own section; `seed` seeds every stage."""

    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


# ---------------------------------------------------------------------------------------------------
# Loading and validation


@dataclass(frozen=True)
class StudyMethod:
    """How the study pretrains one method: a CLIP caption policy on the pool (raw, or recaptioned), a non-CLIP
    baseline (train/baselines.py), or no pretraining. The one table of methods: validation, the study and the
    baselines read it."""

    name: str
    kind: str  # clip | baseline | random
    policy: str = ""  # clip: pretrain.caption_policy, with {captioner} and {mix_p} filled in by the study
    # clip: which of STUDY_CAPTIONERS recaptioned the pool it reads (its cache key then depends on those
    # captions); empty: the pool as the world wrote it
    captioner: str = ""
    split: str = "pool"  # baseline: the world split it trains on
    about: str = ""  # one sentence for the report's notes: what the method's training signal is


# the captioners a study can train on the curated split: name -> captioner.* overrides. "captions-only" drops the
# region supervision (object boxes), to measure how much of clip-synthetic's gain comes through the boxes
STUDY_CAPTIONERS: dict[str, dict[str, Any]] = {"main": {}, "captions-only": {"region_loss_weight": 0.0}}

STUDY_METHODS: dict[str, StudyMethod] = {m.name: m for m in (
    StudyMethod("clip-raw", "clip", "raw", about="CLIP on the pool's raw alt-text"),
    StudyMethod("clip-synthetic", "clip", "synthetic:{captioner}", captioner="main",
                about="CLIP on the in-repo captioner's captions (trained on the curated split's reference "
                      "descriptions, with object boxes as region supervision when captioner.region_loss_weight > 0)"),
    StudyMethod("clip-mix", "clip", "mix:{mix_p}:{captioner}", captioner="main",
                about="CLIP on a synthetic caption with probability study.mix_p, else the alt-text"),
    StudyMethod("clip-synthetic-captions-only", "clip", "synthetic:{captioner}", captioner="captions-only",
                about="CLIP on the captions of a second captioner trained without the object boxes"),
    StudyMethod("clip-reference", "clip", "reference", about="CLIP on the world's reference descriptions (an oracle)"),
    StudyMethod("random", "random", about="the untrained tower"),
    StudyMethod("supervised", "baseline", about="a multi-label classifier of the scene's objects"),
    StudyMethod("mim", "baseline",
                about="masked image modeling (MAE for ViTs, {mim_hierarchical} for hierarchical towers)"),
    # the captioner's box supervision given to the image tower directly: the confound's other arm
    StudyMethod("boxes", "baseline", split="curated",
                about="a per-cell classifier of the curated split's object boxes (the captioner's region supervision "
                      "given to the tower directly; curated images, no crops)"),
)}
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin in (list, tuple, Sequence):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        key_tp, item_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' expects a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' is a section; expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `2e-3` (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise _unknown_key(prefix, str(k), names)
        kwargs[k] = _coerce(v, hints[k], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any, cls: type) -> None:
    parts = dotted.split(".")
    node, node_cls, path = tree, cls, []
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node_cls)}
        path.append(part)
        if part not in names:
            raise _unknown_key(".".join(path[:-1]), part, list(names))
        if i == len(parts) - 1:
            node[part] = value
        else:
            sub_cls = typing.get_type_hints(node_cls)[part]
            if typing.get_origin(sub_cls) is dict:  # a mapping-valued key (study.encoder_train.ENC.lr=...)
                for sub in parts[i:-1]:
                    node = node.setdefault(sub, {})
                    if not isinstance(node, dict):
                        raise ConfigError(f"config key '{dotted}': '{sub}' holds {node!r}, not a mapping")
                node[parts[-1]] = value
                return
            if not dataclasses.is_dataclass(sub_cls):
                raise ConfigError(f"config key '{'.'.join(path)}' is a value, not a section; cannot set '{dotted}'")
            node = node.setdefault(part, {})
            node_cls = sub_cls


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse `key.sub=value` strings; values are read as YAML scalars (`64`, `0.1`, `true`, `[1, 2]`)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. pretrain.batch_size=64)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({' '.join(str(e).split())})") from None
        out.append((key.strip(), value))
    return out


BASE_KEY = "_base_"


def _merge(base: dict, child: dict) -> dict:
    """`child` over `base`: mappings merge key by key, anything else (values, lists) is replaced whole, as in
    mmsegmentation's `_base_` configs."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_tree(p: Path, chain: tuple[Path, ...] = (), renamed: bool = False) -> dict:
    """The YAML mapping of `p`, over the files its `_base_` names (a path or a list of paths, relative to `p`;
    later ones win; `renamed`: each file's old section names are read as the new ones before merging). Why: a
    config that differs from another in a few keys says only those (configs/headline.yaml is configs/demo.yaml
    plus the headline's budget), so the shared world stays one text."""
    what = f"config file '{p}'" + (f" (the {BASE_KEY} of '{chain[-1]}')" if chain else "")
    if p.is_dir():
        raise ConfigError(f"{what} is a folder, not a file: name a YAML file in it (e.g. {p / 'demo.yaml'})")
    if not p.is_file():
        raise ConfigError(f"{what} does not exist (see configs/ for examples)")
    if p.resolve() in chain:
        raise ConfigError(f"config file '{chain[-1]}': its {BASE_KEY} chain comes back to '{p}' "
                          f"({' -> '.join(str(c) for c in chain)}); remove the loop")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file '{p}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); "
                          f"save it as UTF-8") from None
    except PermissionError as e:  # an input the user cannot read: not an output problem
        raise ConfigError(f"config file '{p}' cannot be read ({e.strerror}); make it readable (chmod u+r) or "
                          f"copy it somewhere you can read") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level, got {type(loaded).__name__}")
    bases = loaded.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"config file '{p}': {BASE_KEY} must be a file path or a list of them, got {bases!r}")
    tree: dict = {}
    for b in bases:
        tree = _merge(tree, _read_tree(p.parent / b, (*chain, p.resolve()), renamed))
    return _merge(tree, _renamed_sections(loaded, str(p)) if renamed else loaded)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), cls: type = Config) -> Any:
    """Defaults <- YAML file (over the files its `_base_` names) <- dotted overrides, validated as a whole."""
    tree: dict = _read_tree(Path(path), renamed=cls is Config) if path is not None else {}
    for key, value in parse_overrides(overrides):
        if cls is Config and (key == "train" or key.startswith("train.")):
            _deprecated(f"override '{key}=...'", f"pretrain{key[len('train'):]}")
            key = "pretrain" + key[len("train"):]
        _set_dotted(tree, key, value, cls)
    cfg = from_dict(cls, tree)
    if cls is Config and path is not None:
        _resolve_recipes(cfg, Path(path).parent)
    validate(cfg)
    return cfg


def _resolve_recipes(cfg: Config, config_dir: Path) -> None:
    """study.dense[].recipe relative to the study config's folder when the file is there (as `_base_`), else as
    given (relative to the working directory)."""
    for d in cfg.study.dense:
        if d.recipe and not Path(d.recipe).is_absolute() and (config_dir / d.recipe).is_file():
            d.recipe = str(config_dir / d.recipe)


# methods that need the world's labels (scene graphs, object boxes, reference descriptions of the pool)
WORLD_ONLY_METHODS = {"supervised": "object labels", "boxes": "object boxes",
                      "clip-reference": "reference descriptions of every pool image",
                      "clip-synthetic-captions-only": "a second captioner trained without the world's object boxes"}


def dense_transfer(cfg: Config, d: DenseDataConfig) -> TransferConfig:
    """The transfer settings of one `study.dense` dataset: the study's `transfer` section, then the recipe
    file's `transfer:` section, then the dataset's own `transfer` overrides, then its task, layout and splits."""
    tree = to_dict(cfg.transfer)
    if d.recipe:
        recipe = _read_tree(Path(d.recipe))
        unknown = set(recipe) - {"transfer", "seed"}
        if unknown:
            raise ConfigError(f"study.dense '{d.name}': recipe '{d.recipe}' has sections {sorted(unknown)}; a "
                              "transfer recipe holds a `transfer:` section (e.g. configs/transfer_ade20k_upernet.yaml)")
        tree = _merge(tree, recipe.get("transfer") or {})
    tree = _merge(tree, d.transfer)
    entry = {"task": d.task, "layout": d.layout, "train_split": d.train_split, "val_split": d.val_split,
             "num_classes": d.num_classes}
    tree.update({k: v for k, v in entry.items() if v or k == "task"})
    if d.select_split:
        tree["select_split"] = d.select_split
    return from_dict(TransferConfig, tree, prefix=f"study.dense[{d.name}].transfer")


def uses_own_data(cfg: Config) -> bool:
    """Whether the study reads a user's pool (else it generates the embedded world and trains on its pool)."""
    return bool(cfg.study.pool)


# sections renamed, old spelling -> new: the old one is still read, with a warning, for one release
RENAMED_SECTIONS = {"train": "pretrain"}


def _deprecated(what: str, new: str) -> None:
    import warnings

    msg = f"{what}: the config section 'train' is now 'pretrain' (named after `qclip pretrain`); use {new}"
    warnings.warn(msg, DeprecationWarning, stacklevel=3)
    print(f"qclip: deprecated: {msg}", file=sys.stderr)


def _renamed_sections(tree: dict, source: str) -> dict:
    for old, new in RENAMED_SECTIONS.items():
        if old in tree:
            if new in tree:
                raise ConfigError(f"{source}: both '{old}' and '{new}' sections; '{old}' is the old name of "
                                  f"'{new}': merge them into '{new}'")
            _deprecated(f"{source}: section '{old}:'", f"'{new}:'")
            tree = {(new if k == old else k): v for k, v in tree.items()}
    return tree


def _unknown_key(prefix: str, key: str, names: list[str]) -> ConfigError:
    """The error for `prefix.key`: the closest valid key, then every valid key of that section."""
    dotted = (prefix + "." if prefix else "")
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{dotted}{close[0]}'?)" if close else ""
    where = f"section '{prefix}'" if prefix else "the top level"
    return ConfigError(f"unknown config key '{dotted}{key}'{hint}; valid keys in {where}: {', '.join(names)}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express (world.shapes and world.alt_text_unnamed:
    data.world_shards.split_plan, where the renderer's shapes are known)."""
    w = cfg.world
    checks = [
        # numpy's seed sequences refuse negatives, torch.manual_seed overflows past 2**63; a study adds seeds
        (0 <= cfg.seed and cfg.seed + max(cfg.study.seeds, 1) <= 2 ** 31,
         f"seed must be an integer in [0, 2**31) (with study.seeds={cfg.study.seeds}: up to "
         f"{2 ** 31 - max(cfg.study.seeds, 1)}), got {cfg.seed}"),
        (w.image_size >= 32, "world.image_size must be >= 32"),
        (all(n >= 0 for n in (w.n_pool, w.n_curated, w.n_dense, w.n_dev, w.n_val)), "world split sizes must be >= 0"),
        (1 <= w.colours <= 8, "world.colours must be in 1..8 (the world has 8 named colours)"),
        (1 <= w.min_objects <= w.max_objects <= 8, "need 1 <= world.min_objects <= world.max_objects <= 8"),
        (0.0 <= w.alt_text_relevance <= 1.0, "world.alt_text_relevance must be in [0, 1]"),
        (0.0 <= w.alt_text_context <= 1.0, "world.alt_text_context must be in [0, 1]"),
        (w.image_format in ("png", "jpg"), "world.image_format must be 'png' or 'jpg'"),
        (w.shard_size >= 1 and cfg.ingest.shard_size >= 1, "shard_size must be >= 1"),
        (w.workers >= 1, "world.workers must be >= 1"),
        (0.0 <= cfg.ingest.max_bad_fraction <= 1.0, "ingest.max_bad_fraction must be in [0, 1]"),
        (cfg.pretrain.batch_size >= 1, "pretrain.batch_size must be >= 1"),
        (cfg.pretrain.accum_steps >= 1 and cfg.pretrain.batch_size % cfg.pretrain.accum_steps == 0,
         "pretrain.batch_size must be a multiple of pretrain.accum_steps"),
        (cfg.pretrain.steps >= 1, "pretrain.steps must be >= 1"),
        (cfg.pretrain.mim_mask_patch >= 1, "pretrain.mim_mask_patch must be >= 1 (pixels)"),
        (cfg.pretrain.mim_hierarchical in ("simmim", "spark"), "pretrain.mim_hierarchical must be 'simmim' or 'spark'"),
        (cfg.pretrain.rank_data in ("shards", "global"), "pretrain.rank_data must be 'shards' or 'global'"),
        (cfg.pretrain.loss in ("clip", "siglip"), "pretrain.loss must be 'clip' or 'siglip'"),
        (0.0 <= cfg.pretrain.distill_weight <= 1.0, "pretrain.distill_weight must be in [0, 1]"),
        (cfg.pretrain.distill_weight == 0 or cfg.pretrain.loss == "clip", "distillation needs pretrain.loss=clip"),
        (cfg.pretrain.precision in ("auto", "fp32", "bf16"), "pretrain.precision must be auto, fp32 or bf16"),
        (cfg.pretrain.checkpoint_every >= 1 and cfg.pretrain.log_every >= 1, "pretrain.checkpoint_every/log_every >= 1"),
        (cfg.pretrain.keep_checkpoints >= 0, "pretrain.keep_checkpoints must be >= 0"),
        (cfg.pretrain.cache_mb >= 0, "pretrain.cache_mb must be >= 0 (0: decode every image every time)"),
        (cfg.captioner.vision_stem in ("patch", "conv"), "captioner.vision_stem must be 'patch' or 'conv'"),
        (cfg.captioner.region_loss_weight >= 0, "captioner.region_loss_weight must be >= 0 (0: captions only)"),
        (cfg.transfer.task in ("segmentation", "depth"), "transfer.task must be 'segmentation' or 'depth'"),
        (cfg.transfer.mode in ("probe", "finetune"), "transfer.mode must be 'probe' or 'finetune'"),
        (bool(cfg.transfer.data_fractions) and all(0 < f <= 1 for f in cfg.transfer.data_fractions),
         "transfer.data_fractions must lie in (0, 1], e.g. [0.1, 1.0]"),
        (cfg.transfer.depth_loss in ("silog", "l1log"), "transfer.depth_loss must be 'silog' or 'l1log'"),
        (cfg.transfer.bin_spacing in ("log", "uniform"), "transfer.bin_spacing must be 'log' or 'uniform'"),
        (cfg.transfer.depth_bins >= 0, "transfer.depth_bins must be >= 0 (0 = regress log depth)"),
        (0 < cfg.transfer.min_depth < cfg.transfer.max_depth, "need 0 < transfer.min_depth < transfer.max_depth"),
        (cfg.transfer.steps >= 1 and cfg.transfer.batch_size >= 1, "transfer.steps/batch_size must be >= 1"),
        (cfg.transfer.checkpoint_every >= 0, "transfer.checkpoint_every must be >= 0 (0 = no checkpoints)"),
        (all(math.isfinite(w) and w >= 0 for w in cfg.transfer.probe_weight_decays),
         "transfer.probe_weight_decays must be finite and >= 0, e.g. [0.01, 1.0, 10.0]"),
        (not cfg.transfer.probe_weight_decays or cfg.transfer.mode == "probe",
         "transfer.probe_weight_decays is a probe's grid: use it with transfer.mode=probe, or leave it []"),
        (not cfg.transfer.probe_weight_decays or bool(cfg.transfer.select_split),
         "transfer.probe_weight_decays needs transfer.select_split, a held-out split to choose on (e.g. dev)"),
        (len(cfg.transfer.scale_range) == 2 and 0 < cfg.transfer.scale_range[0] <= cfg.transfer.scale_range[1],
         "transfer.scale_range must be [low, high] with 0 < low <= high, e.g. [0.5, 2.0]"),
        (cfg.transfer.resize_scale == [] or (len(cfg.transfer.resize_scale) == 2
                                             and 0 < cfg.transfer.resize_scale[1] <= cfg.transfer.resize_scale[0]),
         "transfer.resize_scale must be [] or [long, short] with 0 < short <= long, e.g. [2048, 512]"),
        (0 < cfg.transfer.cat_max_ratio <= 1, "transfer.cat_max_ratio must lie in (0, 1] (1 = off; mmseg: 0.75)"),
        (0 < cfg.transfer.layer_decay <= 1, "transfer.layer_decay must lie in (0, 1] (1 = off; mmseg's MAE: 0.65)"),
        (cfg.transfer.schedule in ("cosine", "poly"), "transfer.schedule must be 'cosine' or 'poly'"),
        (cfg.transfer.aux_loss_weight >= 0, "transfer.aux_loss_weight must be >= 0 (0 = no auxiliary head)"),
        (cfg.transfer.eval_mode in ("whole", "slide"), "transfer.eval_mode must be 'whole' or 'slide'"),
        (0 <= cfg.transfer.eval_stride <= cfg.transfer.image_size,
         "transfer.eval_stride must lie in [0, transfer.image_size] (0 = two thirds of the window)"),
        (bool(cfg.transfer.eval_scales) and all(s > 0 for s in cfg.transfer.eval_scales),
         "transfer.eval_scales must be positive ratios, e.g. [1.0] or [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]"),
        (list(cfg.transfer.eval_scales) == [1.0] or cfg.transfer.eval_mode == "slide",
         "transfer.eval_scales other than [1.0] need transfer.eval_mode=slide (a ViT sees image_size windows of "
         "each rescaled image; whole-image inference has one size)"),
        (cfg.transfer.device == "auto" or cfg.transfer.device.split(":")[0] in ("cpu", "cuda"),
         "transfer.device must be auto, cpu, cuda or cuda:N"),
        (not set(cfg.study.methods) - set(STUDY_METHODS),
         f"study.methods: unknown {sorted(set(cfg.study.methods) - set(STUDY_METHODS))}; valid: {', '.join(STUDY_METHODS)}"),
        (set(cfg.study.tasks) <= {"segmentation", "depth"}, "study.tasks: segmentation and/or depth"),
        (cfg.study.seeds >= 1 and 0 < cfg.study.mix_p < 1, "study.seeds >= 1 and 0 < study.mix_p < 1"),
    ]
    t, c, tr = cfg.pretrain, cfg.captioner, cfg.transfer
    fin = math.isfinite
    checks += [  # numbers that NaN, infinity or a sign error would turn into a silently broken run
        (fin(t.lr) and t.lr > 0 and fin(t.min_lr) and 0 <= t.min_lr <= t.lr, "pretrain.lr must be finite and > 0, "
         "pretrain.min_lr in [0, pretrain.lr]"),
        (fin(t.text_lr_mult) and t.text_lr_mult > 0, "pretrain.text_lr_mult must be finite and > 0"),
        (fin(t.weight_decay) and t.weight_decay >= 0, "pretrain.weight_decay must be finite and >= 0"),
        (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1 and fin(t.eps) and t.eps > 0,
         "pretrain.beta1/beta2 must be in [0, 1) and pretrain.eps finite and > 0"),
        (fin(t.grad_clip) and t.grad_clip >= 0, "pretrain.grad_clip must be finite and >= 0 (0 disables)"),
        (fin(c.grad_clip) and c.grad_clip >= 0,
         "captioner.grad_clip must be finite and >= 0 (0 disables)"),
        (fin(tr.grad_clip) and tr.grad_clip >= 0,
         "transfer.grad_clip must be finite and >= 0 (0 disables)"),
        (t.warmup_steps >= 0 and c.warmup_steps >= 0 and tr.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (t.image_size >= 0, "pretrain.image_size must be >= 0 (0: the model config's)"),
        (min(t.workers, t.threads, c.workers, tr.workers, tr.threads) >= 0, "workers and threads must be >= 0"),
        (fin(c.lr) and c.lr > 0 and fin(c.weight_decay) and c.weight_decay >= 0,
         "captioner.lr must be finite and > 0, captioner.weight_decay finite and >= 0"),
        (min(c.image_size, c.width, c.steps, c.batch_size, c.context_length, c.patch_size) >= 1,
         "captioner sizes, steps and batch_size must be >= 1"),
        (fin(tr.lr) and tr.lr > 0 and fin(tr.encoder_lr_mult) and tr.encoder_lr_mult >= 0,
         "transfer.lr must be finite and > 0, transfer.encoder_lr_mult finite and >= 0"),
        (fin(tr.weight_decay) and tr.weight_decay >= 0, "transfer.weight_decay must be finite and >= 0"),
        (tr.image_size >= 16 and tr.eval_batch_size >= 1 and tr.levels >= 1 and tr.decoder_width >= 1,
         "transfer.image_size must be >= 16, eval_batch_size, levels and decoder_width >= 1"),
        (fin(tr.max_cached_feature_gb) and tr.max_cached_feature_gb >= 0, "transfer.max_cached_feature_gb >= 0"),
        (cfg.study.captions_per_image >= 1 and cfg.study.caption_beams >= 1 and cfg.study.caption_batch_size >= 1,
         "study.captions_per_image, caption_beams and caption_batch_size must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    _validate_study_data(cfg)
    for enc, train in cfg.study.encoder_train.items():
        key = f"study.encoder_train.{enc}"
        if enc not in cfg.study.encoders:
            raise ConfigError(f"{key}: '{enc}' is not in study.encoders {cfg.study.encoders}")
        if set(train) & {"model", "caption_policy"}:
            raise ConfigError(f"{key}: model and caption_policy are set by the study per encoder and method")
        merged = _train_with(cfg, enc)  # unknown keys, types
        try:
            validate(dataclasses.replace(cfg, pretrain=merged, study=dataclasses.replace(cfg.study, encoder_train={})))
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None


def _validate_study_data(cfg: Config) -> None:
    """study.pool / curated / dense / given: what is named must fit together before anything runs."""
    st = cfg.study
    for name, spec in st.given.items():
        if name in STUDY_METHODS or name in st.methods:
            raise ConfigError(f"study.given: '{name}' is the name of a method trained here; name the given "
                              f"encoder otherwise (e.g. '{name}-given')")
        if not spec:
            raise ConfigError(f"study.given.{name}: empty encoder spec; give a model folder, MODEL:TAG or timm:NAME")
    if st.pool:
        needs = [f"{m} ({WORLD_ONLY_METHODS[m]})" for m in st.methods if m in WORLD_ONLY_METHODS]
        if needs:
            raise ConfigError(f"study.methods: {', '.join(needs)} exist only on the embedded world, not on "
                              f"study.pool '{st.pool}'; drop them, or give such a baseline as an encoder "
                              "(study.given, e.g. {supervised-in21k: timm:vit_base_patch16_224.augreg_in21k})")
        if not st.dense:
            raise ConfigError("study.pool names your own pool, so study.dense must name the dense datasets to "
                              "transfer to (the world's dense splits belong to the world)")
        if not st.captioner and not st.curated and any(STUDY_METHODS[m].captioner for m in st.methods):
            raise ConfigError("study.pool needs a captioner: set study.captioner (hf:NAME, an open_clip CoCa with "
                              "study.captioner_pretrained, or a captioner folder) or study.curated (a qclip dataset "
                              "with reference captions to train the in-repo captioner on)")
    if st.curated and st.captioner:
        raise ConfigError(f"study.curated '{st.curated}' trains the in-repo captioner, but study.captioner "
                          f"'{st.captioner}' is given: drop one")
    names = [d.name for d in st.dense]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"study.dense: every dataset needs its own name, got {names}")
    tasks = [d.task for d in st.dense]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"study.dense: one dataset per task, got tasks {tasks} (the report compares methods per "
                          "task); run a second study for another dataset of the same task")
    for d in st.dense:
        where = f"study.dense '{d.name}'"
        if not d.path:
            raise ConfigError(f"{where}: path is empty; name the dataset's root folder")
        if d.layout not in ("auto", "ade20k", "voc", "nyu", "folder", "qclip"):
            raise ConfigError(f"{where}: layout '{d.layout}' is not auto, ade20k, voc, nyu, folder or qclip")
        t = dense_transfer(cfg, d)
        try:
            validate(dataclasses.replace(cfg, transfer=t, study=StudyConfig()))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if t.val_split and t.select_split == t.val_split and t.probe_weight_decays:
            raise ConfigError(f"{where}: select_split '{t.select_split}' is the reported split; choose the probe "
                              "grid on another held-out split")


def _train_with(cfg: Config, encoder: str) -> PretrainConfig:
    """`pretrain` with `study.encoder_train[encoder]` applied (keys and types checked as a config file's)."""
    overrides = cfg.study.encoder_train.get(encoder, {})
    return from_dict(PretrainConfig, {**to_dict(cfg.pretrain), **overrides}, prefix=f"study.encoder_train.{encoder}")


def encoder_train(cfg: Config, encoder: str) -> Config:
    """A copy of `cfg` whose `pretrain` section has `study.encoder_train[encoder]` applied."""
    out = copy.deepcopy(cfg)
    out.pretrain = _train_with(cfg, encoder)
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_keys_help(sections: Sequence[str]) -> str:
    """`SECTION.KEY = DEFAULT  comment` for every key of `sections`, read from this file's dataclasses (the
    comment beside each field is its documentation): what `qclip SUB --help` lists after its options."""
    import inspect

    lines = []
    for name in sections:
        cls = typing.get_type_hints(Config).get(name)
        if not dataclasses.is_dataclass(cls):
            continue
        comments = {}
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+):[^=]*=[^#]*#\s*(.*)$", line)
            if m:
                comments[m.group(1)] = m.group(2)
        default = cls()
        for f in dataclasses.fields(cls):
            value = yaml.safe_dump(getattr(default, f.name), default_flow_style=True).strip().removesuffix("...").strip()
            text = f"  {name}.{f.name} = {value or repr(getattr(default, f.name))}"
            lines.append(f"{text:<44} {comments.get(f.name, '')}".rstrip())
    return "\n".join(lines)
