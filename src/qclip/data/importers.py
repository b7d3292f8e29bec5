"""`qclip ingest`: turn image-text pairs from common layouts into a qclip dataset (shards + manifest).

Sources: a folder of images with a CSV / JSONL / Parquet table, COCO captions JSON, existing img2dataset
WebDataset shards. Every importer produces `Candidate`s; one loop validates, skips-and-counts and writes
them, so all sources share the same checks and the same summary line.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm

from ..config import IngestConfig
from .images import BadImage, normalise_image_bytes
from .sample import Sample, empty_captions
from .shards import ShardIntegrityError, ShardWriter, iter_tar_members
from .skips import SkipCounter


class IngestError(ValueError):
    """Input that cannot be ingested at all (missing table, unknown column); names the file and the fix."""


@dataclass
class Candidate:
    where: str  # file (and row) that a skip message names
    read_image: Callable[[], bytes]
    captions: list[Any]  # str or bytes, validated by the loop
    meta: dict = field(default_factory=dict)
    bad: str | None = None  # a reason decided while reading the source (e.g. malformed row)


def inside_folder(folder: Path, name: str) -> Path | None:
    """`folder / name` if it really lies inside `folder` (symlinks followed, absolute names and `..` resolved),
    else None: a table or annotation file must not make ingest read files elsewhere on the machine."""
    root = folder.resolve()
    p = (folder / name).resolve()
    return p if p.is_relative_to(root) and p != root else None


def _read_file(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        return path.read_bytes()
    return read


def clean_caption(text: Any, max_chars: int) -> tuple[str | None, str | None]:
    """(caption, None) or (None, skip reason)."""
    if text is None:
        return None, "empty caption"
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return None, "non-UTF-8 caption"
    if not isinstance(text, str):
        if isinstance(text, float) and text != text:  # NaN from a table
            return None, "empty caption"
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = str(text)  # a number in a caption column is still text ("1984")
        else:  # a dict, list or other object in a caption cell is not a caption; its repr would become one
            return None, "caption is not text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the table held non-UTF-8 bytes
        return None, "non-UTF-8 caption"
    text = " ".join(text.split())
    if not text:
        return None, "empty caption"
    if len(text) > max_chars:
        return None, "caption too long"
    return text, None


def ingest(candidates: Iterable[Candidate], out: str | Path, cfg: IngestConfig, source: str,
           total: int | None = None, progress: bool = True, side_skips: Iterable[SkipCounter] = ()) -> dict:
    """Validate and write candidates to `out`; returns a summary dict (kept, seen, skipped, line).

    `side_skips` are counters the source filled while reading (e.g. unsafe tar members it dropped).
    """
    skips = SkipCounter()
    seen = kept = 0
    writer = ShardWriter(out, prefix="data", shard_size=cfg.shard_size)
    with writer:
        for cand in tqdm(candidates, total=total, desc=f"ingest {source}", unit="img", disable=not progress):
            seen += 1
            if cand.bad:
                skips.skip(cand.bad, cand.where)
                continue
            captions, reason = [], None
            for c in cand.captions:
                text, reason = clean_caption(c, cfg.max_caption_chars)
                if text is None:
                    break
                captions.append(text)
            if reason or not captions:
                skips.skip(reason or "empty caption", cand.where)
                continue
            try:
                data = cand.read_image()
            except FileNotFoundError:
                skips.skip("missing file", cand.where)
                continue
            except OSError as e:
                skips.skip("unreadable file", f"{cand.where} ({e.strerror})")
                continue
            try:
                data, ext, rgb = normalise_image_bytes(data, cfg.max_image_pixels, cfg.min_image_side)
            except BadImage as e:
                skips.skip(e.reason, cand.where)
                continue
            captions_rec = empty_captions()
            captions_rec["raw"] = captions
            meta = {"captions": captions_rec, "scores": {}, "source": source,
                    "width": rgb.width, "height": rgb.height, **cand.meta}
            writer.write(Sample(key=f"{kept:09d}", image=data, image_ext=ext, meta=meta))
            kept += 1
        for side in side_skips:
            seen += side.total
            skips.merge(side)
        if seen == 0:
            raise IngestError(f"ingest {source}: the input holds no samples")
        skips.check_fraction(seen, cfg.max_bad_fraction, f"ingest {source}")
        writer.close({"name": Path(out).name, "source": source, "seen": seen, "skipped": skips.as_dict()})
    return {"kept": kept, "seen": seen, "skipped": skips.as_dict(), "line": skips.summary("ingested", kept, seen)}


# ---------------------------------------------------------------------------------------------------
# Folder + table


def _table_rows(table: Path) -> Iterator[dict | str]:
    """Rows of a CSV / JSONL / Parquet table as dicts; a string stands for a row that could not be read."""
    suffix = table.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(table, "rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    yield f"non-UTF-8 row@{i}"
                    continue
                except json.JSONDecodeError:
                    yield f"malformed row@{i}"
                    continue
                yield row if isinstance(row, dict) else f"malformed row@{i}"
        return
    if suffix in (".csv", ".tsv"):
        import csv

        # surrogateescape keeps non-UTF-8 bytes as lone surrogates, so one bad row is skipped, not the file;
        # utf-8-sig drops a byte-order mark, which would otherwise become part of the first column's name
        with open(table, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            i = 0
            while True:
                i += 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error:  # e.g. a cell over the csv module's field limit: that row, not the file
                    yield f"malformed row@{i}"
                    continue
                yield row
    if suffix not in (".parquet", ".pq"):
        raise IngestError(f"{table}: unknown table format '{suffix}'; use .csv, .tsv, .jsonl or .parquet")
    import pandas as pd

    try:
        df = pd.read_parquet(table)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        raise IngestError(f"{table}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    yield from df.to_dict(orient="records")


def table_candidates(images: str | Path, table: str | Path, path_column: str = "path",
                     caption_column: str = "caption") -> tuple[list[Candidate], int]:
    images, table = Path(images), Path(table)
    if not images.is_dir():
        raise IngestError(f"image folder '{images}' does not exist")
    if not table.is_file():
        raise IngestError(f"table '{table}' does not exist")
    out: list[Candidate] = []
    for i, row in enumerate(_table_rows(table), 1):
        if isinstance(row, str):
            reason, line = row.split("@")
            out.append(Candidate(f"{table.name}:{line}", bytes, [], bad=reason))
            continue
        if path_column not in row or caption_column not in row:
            raise IngestError(
                f"{table}: row {i} has no column '{path_column}' or '{caption_column}' (columns: "
                f"{', '.join(map(str, row))}); pass --path-column/--caption-column"
            )
        rel = row[path_column]
        caps = row[caption_column]
        caps = list(caps) if isinstance(caps, (list, tuple)) or hasattr(caps, "tolist") and not isinstance(caps, str) else [caps]
        where = f"{table.name}:{i} ({rel})"
        if not isinstance(rel, str) or not rel:
            out.append(Candidate(where, bytes, caps, bad="missing path"))
            continue
        if "\0" in rel:  # no file system has such a name
            out.append(Candidate(where, bytes, caps, bad="malformed path"))
            continue
        p = inside_folder(images, rel)
        if p is None:
            out.append(Candidate(where, bytes, caps, bad="path outside image folder"))
            continue
        extra = {k: v for k, v in row.items() if k not in (path_column, caption_column)
                 and isinstance(v, (str, int, float, bool)) and v == v}
        out.append(Candidate(where, _read_file(p), caps, meta={"source_path": rel, **({"extra": extra} if extra else {})}))
    return out, len(out)


# ---------------------------------------------------------------------------------------------------
# COCO captions


_NO_ID = object()  # an annotation's or image's id that is not a COCO id


def coco_candidates(images: str | Path, annotations: str | Path) -> tuple[list[Candidate], int]:
    images, annotations = Path(images), Path(annotations)
    if not annotations.is_file():
        raise IngestError(f"COCO annotations '{annotations}' do not exist (e.g. annotations/captions_train2017.json)")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IngestError(f"{annotations}: not a COCO captions JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise IngestError(f"{annotations}: a COCO captions file needs 'images' and 'annotations' lists")

    def image_id(x: Any) -> Any:  # COCO ids are numbers or strings; a list or dict names no image
        return x if isinstance(x, (int, float, str)) and not isinstance(x, bool) else _NO_ID

    caps: dict[Any, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        if isinstance(ann, dict):
            caps[image_id(ann.get("image_id"))].append(ann.get("caption"))
    out = []
    image_ids = {image_id(im.get("id")) for im in data["images"] if isinstance(im, dict)} - {_NO_ID}
    orphans = sum(len(v) for k, v in caps.items() if k not in image_ids)
    if orphans:  # captions of an image the file does not list: counted, as every other drop
        out.append(Candidate(f"{annotations.name}: {orphans} caption(s) of image ids not in 'images'", bytes, [],
                             bad="caption of an absent image"))
    for im in data["images"]:
        if not isinstance(im, dict) or image_id(im.get("id")) is _NO_ID:
            out.append(Candidate(f"{annotations.name}: image entry {im!r:.40}", bytes, [], bad="malformed image entry"))
            continue
        name = str(im.get("file_name", ""))
        where = f"{annotations.name}:image {im.get('id')} ({name})"
        p = inside_folder(images, name) if name and "\0" not in name else None
        bad = "path outside image folder" if p is None else None
        out.append(Candidate(where, _read_file(p or images / name), caps.get(im.get("id"), []), bad=bad,
                             meta={"source_path": name, "coco_id": im.get("id")}))
    return out, len(out)


# ---------------------------------------------------------------------------------------------------
# img2dataset shards


def img2dataset_candidates(shards: Iterable[str | Path], skips_out: list[SkipCounter]) -> Iterator[Candidate]:
    """Samples of existing img2dataset WebDataset shards (KEY.jpg + KEY.txt + KEY.json)."""
    for shard in shards:
        shard = Path(shard)
        tar_skips = SkipCounter()
        skips_out.append(tar_skips)
        try:
            for m in iter_tar_members(shard, tar_skips):
                key = m.get("__key__", "?")
                where = f"{shard.name}:{key}"
                img = next((m[e] for e in ("jpg", "jpeg", "png", "webp") if e in m), None)
                meta: dict = {}
                if "json" in m:
                    try:
                        meta = json.loads(m["json"].decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        meta = {}
                    if not isinstance(meta, dict):  # another tool's KEY.json (a list, a number): no metadata
                        meta = {}
                cap = m["txt"] if "txt" in m else meta.get("caption")
                extra = {k: meta[k] for k in ("url", "key", "width", "height") if k in meta}
                yield Candidate(where, (lambda b=img: b), [cap],
                                meta={"source_path": where, "img2dataset": extra},
                                bad=None if img is not None else "missing image")
        except ShardIntegrityError:
            yield Candidate(str(shard), bytes, [], bad="unreadable shard")


# ---------------------------------------------------------------------------------------------------
# Hugging Face datasets


def hf_candidates(dataset: str, split: str = "train", image_column: str = "image", caption_column: str = "caption",
                  subset: str | None = None, revision: str | None = None) -> tuple[Iterator[Candidate], int]:
    """Rows of a Hugging Face dataset: a `save_to_disk` folder, or a hub name / local data folder through
    `datasets.load_dataset` (the network is needed only for hub names). Images are taken as stored bytes
    (`Image(decode=False)`), so they pass through the same safe decoding as every other source."""
    try:
        import datasets
    except ImportError:
        raise IngestError("qclip ingest hf needs the datasets package: pip install 'qclip[hf]'") from None
    p = Path(dataset)
    try:
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(dataset, subset, split=split, revision=revision)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise IngestError(f"Hugging Face dataset '{dataset}' could not be opened: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise IngestError(f"{dataset}: no split '{split}' (splits: {', '.join(ds)}); pass --split")
        ds = ds[split]
    cols = ds.column_names
    for col, flag in ((image_column, "--image-column"), (caption_column, "--caption-column")):
        if col not in cols:
            raise IngestError(f"{dataset}: no column '{col}' (columns: {', '.join(cols)}); pass {flag}")
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))

    def image_reader(cell: Any) -> Callable[[], bytes]:
        def read() -> bytes:
            if isinstance(cell, dict) and cell.get("bytes"):
                return cell["bytes"]
            if isinstance(cell, dict) and cell.get("path"):
                return Path(cell["path"]).read_bytes()
            if isinstance(cell, (bytes, bytearray)):
                return bytes(cell)
            raise FileNotFoundError(f"no image bytes or path in {type(cell).__name__}")
        return read

    def rows() -> Iterator[Candidate]:
        for i, row in enumerate(ds):
            caps = row[caption_column]
            caps = list(caps) if isinstance(caps, (list, tuple)) else [caps]
            yield Candidate(f"{dataset}[{split}]:{i}", image_reader(row[image_column]), caps,
                            meta={"source_path": f"{dataset}[{split}]:{i}", "hf_index": i})
    return rows(), len(ds)


def expand_shards(spec: str) -> list[Path]:
    """A folder, a glob, or a brace pattern (`data/{00000..00009}.tar`) -> tar paths."""
    import glob

    from braceexpand import braceexpand

    p = Path(spec)
    if p.is_dir():
        paths = sorted(p.glob("*.tar"))
    elif p.is_file():  # an existing file is itself, even when its name holds [ ] { } (glob and brace syntax)
        paths = [p]
    else:
        paths = sorted(Path(x) for pat in braceexpand(spec) for x in glob.glob(pat))
    if not paths:
        raise IngestError(f"no .tar shards found at '{spec}' (a folder, glob or {{00000..00009}} pattern)")
    return paths
