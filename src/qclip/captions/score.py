"""`qclip caption score`: the CLIP score of every raw and synthetic caption (and reference, where present).

CLIP score = cosine of the L2-normalised image and text embeddings, as in CLIPScore (Hessel et al., 2021) without
its 2.5 rescale, and as DataComp/Nguyen et al. use to filter. Stored per sample under
`scores[SCORER_ID] = {"raw": [..], "reference": [..], "<captioner-id>": [..]}`, aligned with the captions; an
empty caption scores `null`. Same resumable, torchrun-split shard job as `qclip caption run`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.sample import Sample
from ..data.shard_job import decoded_batches, map_shards
from ..data.skips import SkipCounter
from ..models import ClipBundle
from ..models.checkpoint import weights_sha256


def caption_sets(captions: dict) -> dict[str, list[str]]:
    """{"raw": [...], "reference": [...], "<captioner-id>": [...]} of one sample."""
    out = {k: list(captions.get(k) or []) for k in ("raw", "reference") if captions.get(k)}
    out.update({cid: list(texts) for cid, texts in (captions.get("synthetic") or {}).items()})
    return out


@torch.no_grad()
def clip_scores(bundle: ClipBundle, images: list, captions: list[dict[str, list[str]]],
                device: str = "cpu") -> list[dict[str, list]]:
    """Per image, {caption kind: [score or None]} for `captions[i]` (as `caption_sets` gives them)."""
    model = bundle.model
    pixels = torch.stack([bundle.preprocess_val(im) for im in images]).to(device)
    img = F.normalize(model.encode_image(pixels).float(), dim=-1)
    flat = [(i, kind, j, t) for i, sets in enumerate(captions) for kind, texts in sets.items()
            for j, t in enumerate(texts) if t.strip()]
    out = [{kind: [None] * len(texts) for kind, texts in sets.items()} for sets in captions]
    if flat:
        txt = F.normalize(model.encode_text(bundle.tokenizer([t for *_, t in flat]).to(device)).float(), dim=-1)
        rows = torch.tensor([i for i, *_ in flat])
        sims = (img[rows] * txt).sum(-1).tolist()
        for (i, kind, j, _), v in zip(flat, sims):
            out[i][kind][j] = round(v, 5)
    return out


def score_dataset(src: str | Path, dst: str | Path, bundle: ClipBundle, scorer_id: str, batch_size: int = 128,
                  progress: bool = True, device: str = "cpu") -> dict:
    bundle.model.to(device).eval()

    def process(samples: list[Sample], skips: SkipCounter, bar) -> dict[str, int]:
        scored = 0
        for batch, images in decoded_batches(samples, batch_size, skips, bar):
            sets = [caption_sets(s.captions) for s in batch]
            for s, sc in zip(batch, clip_scores(bundle, images, sets, device)):
                s.meta.setdefault("scores", {})[scorer_id] = sc
                scored += 1
        return {"scored": scored}

    weights = weights_sha256(bundle.model)  # a resumed score job keeps shards only from the same scorer weights

    def manifest_update(info: dict) -> dict:
        return {**info, "scorers": sorted(set(info.get("scorers", [])) | {scorer_id}),
                "scorer_weights": {**info.get("scorer_weights", {}), scorer_id: weights}}

    summary = map_shards(src, dst, process, manifest_update, f"score {scorer_id}", 0, progress)
    summary["scorer"] = scorer_id
    if "counts" in summary:
        done = summary["counts"].get("scored", 0)
        summary["line"] = summary.pop("skips").summary(f"scored ({scorer_id})", done,
                                                       done + sum(summary["skipped"].values()))
    return summary
