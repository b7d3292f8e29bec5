"""`qclip caption run`: add synthetic captions to every sample of a dataset, resumable per shard.

Output shards keep the names of the input shards and are each written atomically into `OUT.partial/`, so a
re-run after a kill regenerates only the shards that are missing. Under torchrun, rank r captions shards
r, r+W, ...; rank 0 writes the manifest once every rank is done. The raw alt-text stays beside the new
captions: `captions.synthetic[ID]` is added, nothing is replaced. An image the captioner cannot decode keeps
its sample, without synthetic captions, and is counted; an empty generation is stored as "".
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..data.images import BadImage, open_image
from ..data.sample import Sample
from ..data.shards import ShardReader, ShardWriter, write_shard_file
from ..data.skips import SkipCounter
from .captioners import Captioner, Sampling


def _caption_shard(reader: ShardReader, shard, captioner: Captioner, n: int, sampling: Sampling,
                   batch_size: int, skips: SkipCounter, bar: tqdm) -> tuple[list[Sample], int, int]:
    samples = list(reader.iter_shard(shard))
    done = empty = 0
    for i in range(0, len(samples), batch_size):
        batch, images = [], []
        for s in samples[i:i + batch_size]:
            try:
                images.append(open_image(s.image))
                batch.append(s)
            except BadImage as e:
                skips.skip(e.reason, f"{shard.path}:{s.key}")
        if batch:
            for s, caps in zip(batch, captioner.caption(images, n, sampling)):
                s.captions.setdefault("synthetic", {})[captioner.id] = caps
                empty += sum(1 for c in caps if not c)
                done += 1
        bar.update(len(samples[i:i + batch_size]))
    return samples, done, empty


def recaption(src: str | Path, dst: str | Path, captioner: Captioner, n: int = 1, sampling: Sampling = Sampling(),
              batch_size: int = 32, progress: bool = True, seed: int = 0) -> dict:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    reader = ShardReader(src)
    staging = Path(dst).with_name(Path(dst).name + ".partial")
    writer = None
    if rank == 0:  # only rank 0 sets up the staging folder (and removes a killed run's temp files)
        writer = ShardWriter(dst, prefix="data", resume=True)  # shard names follow src, not this prefix
    if world > 1:
        dist.barrier()
    mine = reader.shards[rank::world]
    todo = [s for s in mine if not (staging / s.path).exists()]
    skips = SkipCounter()
    t0 = time.time()
    bar = tqdm(total=sum(s.num_samples for s in todo), desc=f"caption {captioner.id}", unit="img",
               disable=not progress or rank != 0)
    captioned = empty = 0
    for shard in todo:
        # sampling is seeded per shard, so a resumed run draws the same captions as an uninterrupted one
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1_000_003 + reader.shards.index(shard))
            samples, done, e = _caption_shard(reader, shard, captioner, n, sampling, batch_size, skips, bar)
        write_shard_file(staging / shard.path, samples)
        captioned, empty = captioned + done, empty + e
        bar.set_postfix(img_s=f"{bar.n / max(time.time() - t0, 1e-6):.1f}")
    bar.close()
    # per-rank counts survive a resume: each rank records what its shards held when it captioned them
    atomic_write_json(staging / f"rank{rank}.json", {"skipped": skips.as_dict(), "captioned": captioned,
                                                           "empty": empty})
    if world > 1:
        dist.barrier()
    summary = {"captioner": captioner.id, "shards": len(reader.shards), "resumed_shards": len(mine) - len(todo),
               "seconds": round(time.time() - t0, 2)}
    if writer is not None:
        import json

        totals = SkipCounter()
        captioned_all = empty_all = 0
        for f in sorted(staging.glob("rank*.json")):
            r = json.loads(f.read_text())
            captioned_all += r["captioned"]
            empty_all += r["empty"]
            for reason, k in r["skipped"].items():
                totals.counts[reason] += k
            f.unlink()
        info = {k: v for k, v in reader.manifest.items() if k not in ("shards", "num_samples", "num_shards", "created")}
        syn = dict(info.get("synthetic_captions", {}))
        syn[captioner.id] = {"n": n, "sampling": sampling.__dict__}
        writer.close({**info, "synthetic_captions": syn})
        summary.update({"captioned_this_run": captioned_all, "empty_generations": empty_all,
                        "skipped": totals.as_dict(),
                        "line": totals.summary(f"captioned ({captioner.id})", captioned_all,
                                               captioned_all + totals.total)})
    if world > 1:
        dist.barrier()
    return summary
