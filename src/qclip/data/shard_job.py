"""A per-shard map over a dataset: read each shard, change its samples, write it to a new dataset.

The machinery behind `qclip caption run` and `qclip caption score`. Output shards keep the names of the input
shards and are each written atomically into `OUT.partial/`, so a re-run after a kill redoes only the shards that
are missing. Under torchrun, rank r takes shards r, r+W, ...; rank 0 writes the manifest once every rank is done.
Randomness is seeded per shard, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..atomic import atomic_write_json, read_json_or_none
from .images import BadImage, open_image
from .sample import Sample
from .shards import ShardReader, ShardWriter, write_shard_file
from .skips import SkipCounter

# process(samples, skips, bar) -> counters to add up (e.g. {"captioned": 10, "empty": 0})
ShardFn = Callable[[list[Sample], SkipCounter, tqdm], dict[str, int]]


def decoded_batches(samples: list[Sample], batch_size: int, skips: SkipCounter,
                    bar: tqdm) -> Iterator[tuple[list[Sample], list]]:
    """(samples, decoded PIL images) in batches; an undecodable image is skipped and counted, its sample kept
    in `samples` unchanged. Advances `bar` by every sample seen."""
    for i in range(0, len(samples), batch_size):
        chunk, batch, images = samples[i:i + batch_size], [], []
        for s in chunk:
            try:
                images.append(open_image(s.image))
                batch.append(s)
            except BadImage as e:
                skips.skip(e.reason, s.key)
        if batch:
            yield batch, images
        bar.update(len(chunk))


_JOB = "job.json"


def map_shards(src: str | Path, dst: str | Path, process: ShardFn, manifest_update: Callable[[dict], dict],
               desc: str, seed: int = 0, progress: bool = True) -> dict:
    """Run `process` on every shard of `src` not yet in `dst`; returns the run's counters summed over ranks.

    `manifest_update(info)` returns the output manifest's extra fields given the input's.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    reader = ShardReader(src)
    staging = Path(dst).with_name(Path(dst).name + ".partial")
    # what the finished shards in staging were made from and how: a resumed run keeps them only if it matches
    # (another captioner, --n, sampling or source must not mix into this run's output)
    job = {"src": str(Path(src).resolve()), "src_shards": [s.sha256 for s in reader.shards],
           "job": manifest_update({}), "desc": desc, "seed": seed}
    writer = None
    if rank == 0:  # only rank 0 sets up the staging folder (and removes a killed run's temp files)
        writer = ShardWriter(dst, prefix="data", resume=True)  # shard names follow src, not this prefix
        job_file = staging / _JOB
        if read_json_or_none(job_file) != json.loads(json.dumps(job)):  # another job's (or no job's) finished shards
            for leftover in [*(staging / "shards").glob("*.tar"), *staging.glob("rank*.json")]:
                leftover.unlink()
        atomic_write_json(job_file, job)
    if world > 1:
        dist.barrier()
    try:
        mine = reader.shards[rank::world]
        todo = [s for s in mine if not (staging / s.path).exists()]
        skips, counts, t0 = SkipCounter(), {}, time.time()
        bar = tqdm(total=sum(s.num_samples for s in todo), desc=desc, unit="img", disable=not progress or rank != 0)
        for shard in todo:
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1_000_003 + reader.shards.index(shard))
                samples = list(reader.iter_shard(shard, skips))
                for k, v in process(samples, skips, bar).items():
                    counts[k] = counts.get(k, 0) + v
            write_shard_file(staging / shard.path, samples)
            bar.set_postfix(img_s=f"{bar.n / max(time.time() - t0, 1e-6):.1f}")
        bar.close()
        # per-rank counts survive a resume: each rank records what its shards held when it processed them
        atomic_write_json(staging / f"rank{rank}.json", {"skipped": skips.as_dict(), "counts": counts})
        if world > 1:
            dist.barrier()
        summary = {"shards": len(reader.shards), "resumed_shards": len(mine) - len(todo),
                   "seconds": round(time.time() - t0, 2)}
    except BaseException:
        if writer is not None:
            writer.release()  # finished shards stay in staging for a resume; the output is free again
        raise
    if writer is not None:
        totals, counts_all = SkipCounter(), {}
        for f in sorted(staging.glob("rank*.json")):
            r = json.loads(f.read_text())
            for k, v in r["counts"].items():
                counts_all[k] = counts_all.get(k, 0) + v
            for reason, k in r["skipped"].items():
                totals.counts[reason] += k
            f.unlink()
        info = {k: v for k, v in reader.manifest.items() if k not in ("shards", "num_samples", "num_shards", "created")}
        (staging / _JOB).unlink(missing_ok=True)
        writer.close(manifest_update(info))
        summary.update({"counts": counts_all, "skipped": totals.as_dict(), "skips": totals})
    if world > 1:
        dist.barrier()
    return summary
