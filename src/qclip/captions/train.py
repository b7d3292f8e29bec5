"""`qclip caption train`: train the in-repo captioner (open_clip's CoCa, tiny) on a dataset's reference
descriptions, as COCO-trained captioners are trained before they recaption web data.

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
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..config import Config
from ..data.shards import ShardReader
from ..models import create_clip
from ..models.checkpoint import MODEL_CONFIG, save_model_dir
from ..provenance import write_run_info
from ..train.data import ClipShardDataset, TrainDataError, make_loader, steps_per_epoch
from ..train.pretrain import load_checkpoint, lr_lambda, param_groups, save_checkpoint
from .policy import CaptionPolicy
from .vocab import WordTokenizer

VOCAB = "vocab.json"


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


def train_captioner(cfg: Config, data: str | Path, out: str | Path, progress: bool = True) -> dict:
    c, out, t0 = cfg.captioner, Path(out), time.time()
    torch.manual_seed(cfg.seed)
    policy = CaptionPolicy.parse("reference")
    model_dir = out / "model"
    vocab_file = model_dir / VOCAB
    if vocab_file.is_file():  # resuming: the vocabulary is part of the model
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
    ds = ClipShardDataset(data, policy, bundle.preprocess_train, tok, cfg.seed)
    spe = steps_per_epoch(len(ds), c.batch_size, 1)
    if spe == 0:
        raise TrainDataError(f"{data}: {len(ds)} captioned samples, fewer than one batch of {c.batch_size}")
    opt = torch.optim.AdamW(param_groups(model, c.weight_decay), lr=c.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c.warmup_steps, c.steps, c.lr, 0.0))
    start = load_checkpoint(out / "checkpoints", model, opt, sched)
    loss_fn = CoCaLoss(caption_loss_weight=c.caption_loss_weight, clip_loss_weight=c.clip_loss_weight,
                       pad_id=tok.pad_id)
    write_run_info(out, cfg, "caption-train", {"data": str(data), "vocab": len(tok), "resumed_from_step": start})
    loader = make_loader(ds, c.batch_size, spe, c.steps, cfg.seed, 0, start, c.workers)
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=c.steps, initial=start, desc="caption train", unit="step", disable=not progress)
    model.train()
    step, clip_l, cap_l = start, float("nan"), float("nan")
    for batch in loader:
        o = model(batch["images"], batch["texts"][:, 0])
        clip_loss, cap_loss = loss_fn(o["image_features"], o["text_features"], o["logits"], o["labels"],
                                      o["logit_scale"])
        opt.zero_grad(set_to_none=True)
        (clip_loss + cap_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        clip_l, cap_l = clip_loss.item(), cap_loss.item() / c.caption_loss_weight
        bar.update(1)
        if step % 10 == 0 or step == c.steps:
            metrics.write(json.dumps({"step": step, "caption_loss": cap_l, "clip_loss": clip_l,
                                      "lr": sched.get_last_lr()[0]}) + "\n")
            metrics.flush()
            bar.set_postfix(caption_loss=f"{cap_l:.3f}")
        if step % c.checkpoint_every == 0 or step == c.steps:
            save_checkpoint(out / "checkpoints", model, opt, sched, step)
    bar.close()
    metrics.close()
    save_model_dir(model, coca_config(c, len(tok)), bundle.preprocess_cfg, model_dir, bundle.qclip_cfg)
    summary = {"steps": step, "caption_loss": cap_l, "clip_loss": clip_l, "vocab": len(tok),
               "seconds": round(time.time() - t0, 2), "model_dir": str(model_dir)}
    atomic_write_json(out / "summary.json", summary)
    return summary
