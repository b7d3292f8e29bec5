"""`qclip caption train`: train the in-repo captioner (open_clip's CoCa, tiny) on a dataset's reference
descriptions, as COCO-trained captioners are trained before they recaption web data, plus region supervision
(object boxes and their class, `captions.regions`) where the samples carry a scene graph.

Images go through the deterministic eval transform (resize, centre crop): descriptions say "left of" and
the region loss needs exact boxes, which a random crop would move.

Same conventions as pretraining: exact-resume data order, safetensors checkpoints + state, metrics.jsonl,
and a model folder (`OUT/model`: open_clip_config.json, weights, vocab.json) that `qclip caption run
--captioner OUT/model` loads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from open_clip.loss import CoCaLoss
from torch import nn
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..config import Config
from ..data.policy import CaptionPolicy
from ..data.shards import ShardReader
from ..models import create_clip
from ..models.checkpoint import MODEL_CONFIG, MODEL_VOCAB, save_model_dir
from ..models.vocab import WordTokenizer
from ..optim import adamw, load_checkpoint, lr_lambda, optimizer_step, param_groups, save_checkpoint
from ..provenance import take_output_folder, write_run_info
from ..train.shard_dataset import ClipShardDataset, TrainDataError, make_loader, steps_per_epoch
from .regions import RegionHead, box_in_input, object_boxes


def coca_config(c, vocab_size: int) -> dict:
    heads = max(1, c.width // 32)
    return {
        "embed_dim": c.width,
        "vision_cfg": {"image_size": c.image_size, "layers": c.vision_layers, "width": c.width,
                       "patch_size": c.patch_size, "head_width": 32, "attentional_pool": c.attentional_pool,
                       "attn_pooler_heads": heads, "output_tokens": True},
        "text_cfg": {"context_length": c.context_length, "vocab_size": vocab_size, "width": c.width, "heads": heads,
                     "layers": c.text_layers, "embed_cls": True, "output_tokens": True, "pad_id": 0},
        "multimodal_cfg": {"context_length": c.context_length, "vocab_size": vocab_size, "width": c.width,
                           "heads": heads, "layers": c.decoder_layers, "attn_pooler_heads": heads},
        "custom_text": True,
    }


class CaptionerTraining(nn.Module):
    """What a training step updates and a checkpoint holds: the CoCa and, with region supervision, its
    region head (not part of the saved captioner)."""

    def __init__(self, coca: nn.Module, region_head: RegionHead | None) -> None:
        super().__init__()
        self.coca, self.region_head = coca, region_head


def region_targets(data: str | Path, keys: list[str], image_size: int) -> tuple[list[list], list[str]]:
    """Per dataset sample (in `keys` order): [(box in input pixels, class id)], and the class names."""
    found: dict[str, list] = {}
    for s in ShardReader(data):
        w, h = s.meta.get("width"), s.meta.get("height")
        if w and h:
            found[s.key] = [(box_in_input(b, w, h, image_size), name) for b, name in object_boxes(s.meta)]
    classes = sorted({name for boxes in found.values() for _, name in boxes})
    index = {c: i for i, c in enumerate(classes)}
    return [[(b, index[n]) for b, n in found.get(k, []) if b is not None] for k in keys], classes


def train_captioner(cfg: Config, data: str | Path, out: str | Path, progress: bool = True) -> dict:
    c, out, t0 = cfg.captioner, Path(out), time.time()
    take_output_folder(out, "caption train")
    torch.manual_seed(cfg.seed)
    policy = CaptionPolicy.parse("reference")
    model_dir = out / "model"
    vocab_file = model_dir / MODEL_VOCAB
    # resuming: the vocabulary is part of the model. Both files are checked: a kill between writing the
    # vocabulary and the config left a folder that open_clip cannot load; that one is written again.
    if vocab_file.is_file() and (model_dir / MODEL_CONFIG).is_file():
        tok = WordTokenizer.load(vocab_file)
    else:
        texts = [t for s in ShardReader(data) for t in s.captions.get("reference", [])]
        if not texts:
            raise TrainDataError(f"{data}: no reference captions to train a captioner on (use the world's curated split)")
        tok = WordTokenizer.from_texts(texts, c.context_length)
        model_dir.mkdir(parents=True, exist_ok=True)
        tok.save(vocab_file)
        atomic_write_json(model_dir / MODEL_CONFIG, {"model_cfg": coca_config(c, len(tok)), "preprocess_cfg": {},
                                                     "qclip": {"vision_stem": c.vision_stem}})
    bundle = create_clip(f"local-dir:{model_dir}")
    model = bundle.model
    ds = ClipShardDataset(data, policy, bundle.preprocess_val, tok, cfg.seed, cache_pixels=True)
    spe = steps_per_epoch(len(ds), c.batch_size, 1)
    if spe == 0:
        raise TrainDataError(f"{data}: {len(ds)} captioned samples, fewer than one batch of {c.batch_size}")
    boxes, classes = region_targets(data, [x.key for x in ds.samples], c.image_size) \
        if c.region_loss_weight > 0 else ([], [])
    head = RegionHead(c.width, len(classes), c.image_size // c.patch_size, c.image_size) if classes else None
    trainee = CaptionerTraining(model, head)
    opt = adamw(param_groups(trainee, c.weight_decay), c.lr, (0.9, 0.98), 1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c.warmup_steps, c.steps, c.lr, 0.0))
    start = load_checkpoint(out / "checkpoints", trainee, opt, sched)
    loss_fn = CoCaLoss(caption_loss_weight=c.caption_loss_weight, clip_loss_weight=c.clip_loss_weight,
                       pad_id=tok.pad_id)
    n_boxes = sum(len(b) for b in boxes)
    write_run_info(out, cfg, "caption-train", {"data": str(data), "vocab": len(tok), "resumed_from_step": start,
                                               "region_classes": classes, "region_boxes": n_boxes})
    loader = make_loader(ds, c.batch_size, spe, c.steps, cfg.seed, 0, start, c.workers)
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=c.steps, initial=start, desc="caption train", unit="step", disable=not progress)
    trainee.train()
    step, clip_l, cap_l = start, float("nan"), float("nan")
    region_l: float | None = None  # None: no region supervision
    for batch in loader:
        # the tower runs once: the decoder and the region head read the same tokens
        latent, tokens = model._encode_image(batch["images"])
        o = model(batch["images"], batch["texts"][:, 0], image_latent=latent, image_embs=tokens)
        clip_loss, cap_loss = loss_fn(o["image_features"], o["text_features"], o["logits"], o["labels"],
                                      o["logit_scale"])
        loss = clip_loss + cap_loss
        if head is not None:
            region_loss = head.loss(tokens, [boxes[i] for i in batch["index"].tolist()])
            loss = loss + c.region_loss_weight * region_loss
            region_l = region_loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(opt, sched, trainee.parameters(), c.grad_clip)
        step += 1
        clip_l, cap_l = clip_loss.item(), cap_loss.item() / c.caption_loss_weight
        bar.update(1)
        if step % 10 == 0 or step == c.steps:
            metrics.write(json.dumps({"step": step, "caption_loss": cap_l, "clip_loss": clip_l,
                                      "region_loss": region_l, "lr": sched.get_last_lr()[0]}) + "\n")
            metrics.flush()
            bar.set_postfix(caption_loss=f"{cap_l:.3f}")
        if step % c.checkpoint_every == 0 or step == c.steps:
            save_checkpoint(out / "checkpoints", trainee, opt, sched, step)
    bar.close()
    metrics.close()
    save_model_dir(model, coca_config(c, len(tok)), bundle.preprocess_cfg, model_dir, bundle.qclip_cfg)
    summary = {"steps": step, "caption_loss": cap_l, "clip_loss": clip_l, "region_loss": region_l,
               "region_classes": classes, "region_boxes": n_boxes, "vocab": len(tok),
               "seconds": round(time.time() - t0, 2), "model_dir": str(model_dir)}
    atomic_write_json(out / "summary.json", summary)
    return summary
