"""`qclip caption run`: add synthetic captions to every sample of a dataset, resumable per shard.

The raw alt-text stays beside the new captions: `captions.synthetic[ID]` is added, nothing is replaced. An
image the captioner cannot decode keeps its sample, without synthetic captions, and is counted; an empty
generation is stored as "". Resume, torchrun split and atomic writes come from `data.shard_job.map_shards`;
sampling is seeded per shard, so a resumed run draws the same captions as an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path

from ..data.sample import Sample
from ..data.shard_job import decoded_batches, map_shards
from ..data.skips import SkipCounter
from ..models.checkpoint import weights_sha256
from .captioners import Captioner, Sampling


def recaption(src: str | Path, dst: str | Path, captioner: Captioner, n: int = 1, sampling: Sampling = Sampling(),
              batch_size: int = 32, progress: bool = True, seed: int = 0) -> dict:
    def process(samples: list[Sample], skips: SkipCounter, bar) -> dict[str, int]:
        done = empty = 0
        for batch, images in decoded_batches(samples, batch_size, skips, bar):
            for s, caps in zip(batch, captioner.caption(images, n, sampling)):
                s.captions.setdefault("synthetic", {})[captioner.id] = caps
                empty += sum(1 for c in caps if not c)
                done += 1
        return {"captioned": done, "empty": empty}

    # the captioner's weights are part of the job: a retrained captioner under the same id must not resume
    # into (and mix with) the shards of the old one
    weights = weights_sha256(captioner.model) if hasattr(captioner, "model") else getattr(captioner, "weights", "")

    def manifest_update(info: dict) -> dict:
        syn = dict(info.get("synthetic_captions", {}))
        syn[captioner.id] = {"n": n, "sampling": sampling.__dict__, "weights_sha256": weights}
        return {**info, "synthetic_captions": syn}

    summary = map_shards(src, dst, process, manifest_update, f"caption {captioner.id}", seed, progress)
    summary["captioner"] = captioner.id
    if "counts" in summary:
        done = summary["counts"].get("captioned", 0)
        summary.update({"captioned_this_run": done, "empty_generations": summary["counts"].get("empty", 0),
                        "line": summary.pop("skips").summary(f"captioned ({captioner.id})", done,
                                                             done + sum(summary["skipped"].values()))})
    return summary
