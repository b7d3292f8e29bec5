"""`qclip world`: write the embedded world's splits as qclip datasets, in parallel and resumably.

Splits (each a dataset directory under OUT/):
  curated  reference descriptions + alt-text: trains the captioner
  pool     alt-text only: what CLIP pretrains on (recaptioned by `qclip caption`)
  dense    masks + depth: labelled training data for the transfer stage
  dev      masks + depth: a development split for choosing budgets and probe settings (never the reported one)
  val      everything: held-out dense evaluation and retrieval (the reported split)
"""
from __future__ import annotations

import io
import multiprocessing as mp
import textwrap
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..atomic import atomic_write_bytes, atomic_write_json, read_json_or_none, remove_tree
from ..config import Config, ConfigError, without_neutral_world_keys
from ..provenance import take_output_folder
from .sample import Sample
from .shards import MANIFEST, ShardReader, ShardWriter, is_dataset, write_shard_file
from .world import ALL_SHAPES, SHAPES, STUFF_CLASSES, WorldSpec, make_sample, seg_classes

SPLITS = ("curated", "dense", "dev", "val", "pool")
_FINGERPRINT = "world.json"


def world_shapes(data: str | Path) -> tuple[str, ...]:
    """The object shapes of a world split (its manifest's classes after the background ones, in class-id order);
    the default world's for a dataset that does not list them."""
    m = ShardReader(data).manifest if is_dataset(data) else {}
    names = [c for c in m.get("seg_classes") or [] if c not in (m.get("stuff_classes") or STUFF_CLASSES)]
    return tuple(names) or SHAPES


def split_plan(cfg: Config) -> dict[str, tuple[WorldSpec, int]]:
    w = cfg.world
    if not w.shapes or not set(w.shapes) <= set(ALL_SHAPES) or len(set(w.shapes)) != len(w.shapes):
        raise ConfigError(f"world.shapes = {w.shapes}: list distinct shapes of the renderer's {list(ALL_SHAPES)}")
    if not set(w.alt_text_unnamed) <= set(w.shapes) or len(set(w.alt_text_unnamed)) >= len(w.shapes):
        raise ConfigError(f"world.alt_text_unnamed = {w.alt_text_unnamed}: name some of the world's shapes "
                          f"{list(w.shapes)}, not all of them")
    sizes = {"curated": w.n_curated, "dense": w.n_dense, "dev": w.n_dev, "val": w.n_val, "pool": w.n_pool}
    plan = {}
    for split in SPLITS:
        spec = WorldSpec(
            seed=cfg.seed, split=split, image_size=w.image_size, min_objects=w.min_objects,
            max_objects=w.max_objects, alt_text_relevance=w.alt_text_relevance,
            descriptions_per_image=w.descriptions_per_image, image_format=w.image_format,
            with_reference=split in ("curated", "val"), with_dense=split in ("dense", "dev", "val"), colours=w.colours,
            alt_text_context=w.alt_text_context, alt_text_unnamed=tuple(w.alt_text_unnamed), shapes=tuple(w.shapes),
        )
        plan[split] = (spec, sizes[split])
    return plan


def _fingerprint(spec: WorldSpec, n: int, shard_size: int) -> dict:
    # worlds written before a setting existed keep their fingerprint
    return {**without_neutral_world_keys(asdict(spec)), "num_samples": n, "shard_size": shard_size}


def _shard_task(args: tuple) -> tuple[str, int]:
    spec, path, start, count = args
    write_shard_file(path, (make_sample(spec, i) for i in range(start, start + count)))
    return spec.split, count


def build_world(cfg: Config, out: str | Path, progress: bool = True, splits: Sequence[str] = SPLITS) -> dict:
    """Generate every split of `splits` that is missing or stale; keep finished ones and finished shards (a later
    call with more splits generates only those). Returns a summary."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"build_world: unknown splits {sorted(unknown)}; the world's splits are {list(SPLITS)}")
    out = take_output_folder(out, "world")
    t0 = time.time()
    shard_size = cfg.world.shard_size
    writers: dict[str, ShardWriter] = {}
    tasks, reused, counts = [], [], {}
    plan = split_plan(cfg)
    for split, (spec, n) in plan.items():
        if split not in splits:
            continue
        final = out / split
        fp = _fingerprint(spec, n, shard_size)
        counts[split] = n
        if is_dataset(final) and ShardReader(final).manifest.get("world") == fp:
            reused.append(split)
            continue
        staging = final.with_name(final.name + ".partial")
        fp_file = staging / _FINGERPRINT
        if staging.exists() and (not fp_file.is_file() or read_json_or_none(fp_file) != fp):
            remove_tree(staging)  # a different config's leftovers: never mix them into this split
        writer = ShardWriter(final, prefix=split, shard_size=shard_size, resume=True)
        atomic_write_json(fp_file, fp)
        done = writer.done_shards()
        for idx, start in enumerate(range(0, n, shard_size)):
            if idx not in done:
                tasks.append((spec, writer.shard_path(idx), start, min(shard_size, n - start)))
        writers[split] = writer

    todo = sum(t[3] for t in tasks)
    bar = tqdm(total=todo, desc="world", unit="img", disable=not progress or todo == 0)
    workers = min(cfg.world.workers, max(1, len(tasks)))
    try:
        if workers > 1:
            # spawn, not fork: the caller may already hold torch thread pools, which fork does not survive
            with mp.get_context("spawn").Pool(workers) as pool:
                for _, count in pool.imap_unordered(_shard_task, tasks):
                    bar.update(count)
        else:
            for task in tasks:
                bar.update(_shard_task(task)[1])
        bar.close()

        for split, writer in writers.items():
            spec, n = plan[split]
            (writer.staging / _FINGERPRINT).unlink(missing_ok=True)
            writer.close({
                "name": split, "source": "qclip world", "world": _fingerprint(spec, n, shard_size),
                "seg_classes": list(seg_classes(spec.shapes)), "stuff_classes": list(STUFF_CLASSES),
                "hflip_safe": False,
                "fields": ["image", "json", "txt"] + (["seg.png", "depth.npy"] if spec.with_dense else []),
            })
    finally:  # a failure (a full disk, Ctrl-C): finished shards stay for the re-run, the writers' locks go
        for writer in writers.values():
            if not writer.closed:
                writer.release()
    seconds = time.time() - t0
    return {"out": str(out), "splits": counts, "generated": todo, "reused": reused, "seconds": round(seconds, 2)}


def summary_line(info: dict, out: str | Path | None = None) -> str:
    """The world stage's one line; with `out`, a world the study's stage cache reused, now in `out`."""
    parts = ", ".join(f"{k} {v:,}" for k, v in info["splits"].items())
    if out is not None:
        return f"world: {sum(info['splits'].values()):,} samples ({parts}) in {out}, from the stage cache"
    reused = f"; reused {', '.join(info['reused'])}" if info["reused"] else ""
    return f"world: {sum(info['splits'].values()):,} samples ({parts}) in {info['out']}, " \
           f"generated {info['generated']:,} in {info['seconds']:.1f}s{reused}"


def write_preview(world_dir: str | Path, path: str | Path, n: int = 6) -> Path:
    """PNG grid: image, class mask, depth, and both caption kinds, for the first `n` val samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    world_dir, path = Path(world_dir), Path(path)
    src = world_dir / "val" if is_dataset(world_dir / "val") else world_dir / "dense"
    samples: list[Sample] = []
    reader = ShardReader(src)
    for s in reader:
        samples.append(s)
        if len(samples) >= n:
            break
    if not samples:
        raise ValueError(f"{src}: no samples to preview (set world.n_val > 0)")
    from .palette import DEPTH_CMAP, class_legend, mask_cmap

    classes = reader.manifest.get("seg_classes") or []
    cmap = mask_cmap(len(classes))
    fig, axes = plt.subplots(len(samples), 4, figsize=(13, 2.4 * len(samples)),
                             gridspec_kw={"width_ratios": [1, 1, 1, 2.6]})
    axes = np.atleast_2d(axes)
    for row, s in zip(axes, samples):
        row[0].imshow(s.pil())
        row[1].imshow(s.seg, cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
        im = row[2].imshow(s.depth, cmap=DEPTH_CMAP)
        fig.colorbar(im, ax=row[2], fraction=0.046, label="depth (m)")
        raw = s.captions.get("raw") or ["(empty)"]
        ref = s.captions.get("reference") or ["(none)"]
        parts = [f"alt-text [{s.meta.get('alt_text_kind')}]: {raw[0]}", f"reference: {ref[0]}"]
        row[3].text(0, 0.5, "\n\n".join(textwrap.fill(t, 70) for t in parts), va="center", fontsize=8)
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
        row[3].axis("off")
        row[0].set_ylabel(s.key, fontsize=7)
    axes[0, 0].set_title("image")
    axes[0, 1].set_title("class mask")
    class_legend(fig, list(classes), y=0.0)
    axes[0, 2].set_title("depth")
    axes[0, 3].set_title("captions")
    fig.tight_layout()
    fig.subplots_adjust(bottom=0.3 / fig.get_figheight())  # room for the class legend
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = ["SPLITS", "build_world", "write_preview", "summary_line", "split_plan", "MANIFEST"]
