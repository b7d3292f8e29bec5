"""WebDataset shards with a manifest: the on-disk unit every stage reads and writes.

A dataset directory is `shards/*.tar` + `manifest.json` (schema version, per-shard sample counts and sha256).
`ShardWriter` stages everything in `DIR.partial/` and renames it onto `DIR` only when complete, so a reader
sees a whole dataset or none. Each shard is itself written to a temp file and renamed, so an interrupted
writer in resume mode keeps every finished shard and redoes only the rest.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_expander, valid_sample

from ..atomic import OutputFolderError, atomic_file, exclusive_lock, release_lock, atomic_write_json, commit_dir, remove_tree
from .sample import SCHEMA_VERSION, Sample
from .skips import SkipCounter

MANIFEST = "manifest.json"
_FIXED_MTIME = 1_700_000_000  # fixed member mtime: same samples -> byte-identical shard -> same sha256


class ShardIntegrityError(RuntimeError):
    """A dataset on disk does not match its manifest (missing, truncated or modified shard)."""


@dataclass
class ShardInfo:
    path: str  # relative to the dataset root
    num_samples: int
    sha256: str
    bytes: int

    def as_dict(self) -> dict:
        return {"path": self.path, "num_samples": self.num_samples, "sha256": self.sha256, "bytes": self.bytes}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard_file(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write `samples` into one tar at `path` atomically; returns the number written.

    A module-level function so worker processes can write their own shards in parallel.
    """
    n = 0
    with atomic_file(path, "wb") as f:
        tw = wds.TarWriter(f, encoder=False, mtime=_FIXED_MTIME)
        try:
            for s in samples:
                tw.write(s.to_members())
                n += 1
            tw.tarstream.close()  # closes the tar (end blocks) without closing our temp file
        except BaseException:
            # the half tar goes with its temp file: mark its stream closed, so that tarfile's _Stream.__del__
            # does not write into the closed file later ("Exception ignored ... write to closed file")
            stream = getattr(tw.tarstream, "fileobj", None)
            if stream is not None and hasattr(stream, "closed"):
                stream.closed = True
            tw.tarstream.closed = True
            raise
    return n


def is_unsafe_member(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name


def iter_tar_members(path: str | Path, skips: SkipCounter | None = None) -> Iterator[dict[str, Any]]:
    """Group a tar's members into WebDataset samples (webdataset's own tar iteration and grouping).

    Members with unsafe names (absolute, `..`) are dropped and counted: we never extract to disk, but such a
    name as a key would later become a file name in someone's output.
    """
    def safe(files: Iterable[dict]) -> Iterator[dict]:
        for f in files:
            if is_unsafe_member(f["fname"]):
                if skips is not None:
                    skips.skip("unsafe member name", f"{Path(path).name}:{f['fname']}")
                continue
            yield f

    def fail(exn: Exception) -> bool:
        raise ShardIntegrityError(f"{path}: cannot read tar ({exn}); the file is truncated or not a tar") from exn

    try:
        stream = open(path, "rb")
    except OSError as e:
        raise ShardIntegrityError(f"{path}: cannot open shard ({e})") from None
    with stream:
        files = tar_file_expander([{"url": str(path), "stream": stream}], handler=fail)
        yield from _group_by_keys(safe(files), Path(path).name, skips)


def _group_by_keys(files: Iterable[dict], shard: str, skips: SkipCounter | None) -> Iterator[dict[str, Any]]:
    """Consecutive members with one key -> one sample, as webdataset's `group_by_keys`, except that a sample with
    a duplicate member (a second `KEY.txt`, as a re-run downloader appends) is dropped and counted alone: webdataset
    raises there, which lost every later sample of the shard."""
    current: dict | None = None
    broken = False

    def done() -> Iterator[dict]:
        if current is not None and broken:
            if skips is not None:
                skips.skip("duplicate member", f"{shard}:{current['__key__']}")
        elif valid_sample(current):
            yield current

    for f in files:
        prefix, suffix = base_plus_ext(f["fname"])
        if prefix is None:
            continue
        suffix = suffix.lower()
        if current is None or prefix != current["__key__"]:
            yield from done()
            current, broken = {"__key__": prefix, "__url__": f["__url__"]}, False
        if suffix in current:
            broken = True
        current[suffix] = f["data"]
    yield from done()


def shard_stats(path: str | Path) -> ShardInfo:
    path = Path(path)
    n = sum(1 for _ in iter_tar_members(path))
    return ShardInfo(path=f"shards/{path.name}", num_samples=n, sha256=file_sha256(path), bytes=path.stat().st_size)


def ensure_replaceable(root: str | Path) -> None:
    """qclip replaces only what it wrote: a missing path, an empty folder or a qclip dataset (manifest.json).
    Anything else (a user's notes, an image folder, the parent of a dataset) is refused before any work."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink() and (is_dataset(root) or not any(root.iterdir())):
        return
    what = "a file" if root.is_file() else ("a symlink" if root.is_symlink() else "a folder that is not a qclip dataset")
    raise OutputFolderError(f"output '{root}' is {what} (no {MANIFEST}); qclip only replaces datasets it wrote: "
                            f"choose a new --out path, or move that one away yourself")


def _lock_output(root: Path):
    """An exclusive lock on `.NAME.lock` beside the output, held while a writer is open: a second qclip process
    writing the same output fails at once instead of mixing its samples into the first one's."""
    root.parent.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(root.with_name(f".{root.name}.lock"), str(os.getpid()),
                          f"another qclip process (pid {{holder}}) is writing '{root}'; wait for it to finish or "
                          f"choose another --out")


class ShardWriter:
    """Write samples into `root/shards/{prefix}-NNNNNN.tar` plus `root/manifest.json`.

    Use as a context manager. On success `close()` commits `root` atomically; on error the staging folder
    is removed, unless `resume=True`, where finished shards stay for the next run (see `done_shards`).
    """

    def __init__(self, root: str | Path, prefix: str = "data", shard_size: int = 1000, resume: bool = False) -> None:
        self.root = Path(root)
        self.staging = self.root.with_name(self.root.name + ".partial")
        self.prefix = prefix
        self.shard_size = shard_size
        self.resume = resume
        ensure_replaceable(self.root)  # before any work: never end a long job by refusing its output
        self._lock = _lock_output(self.root)
        if not resume:
            remove_tree(self.staging)
        (self.staging / "shards").mkdir(parents=True, exist_ok=True)
        for tmp in (self.staging / "shards").glob(".*.tmp"):  # a killed writer's half shard
            tmp.unlink()
        self._buffer: list[Sample] = []
        self._next_index = 0
        self.closed = False

    # -- paths and resume ----------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.staging / "shards" / f"{self.prefix}-{index:06d}.tar"

    def done_shards(self) -> set[int]:
        """Indices of shards already complete in the staging folder (a previous, interrupted run)."""
        done = set()
        for p in (self.staging / "shards").glob(f"{self.prefix}-*.tar"):
            try:
                done.add(int(p.stem.rsplit("-", 1)[1]))
            except ValueError:
                continue
        return done

    # -- writing -------------------------------------------------------------------------------------
    def write(self, sample: Sample) -> None:
        """Append one sample; shards are cut every `shard_size` samples."""
        self._buffer.append(sample)
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def write_shard(self, index: int, samples: Iterable[Sample]) -> int:
        """Write shard `index` as a whole (for producers that generate shards independently)."""
        return write_shard_file(self.shard_path(index), samples)

    def _flush(self) -> None:
        if self._buffer:
            while self.shard_path(self._next_index).exists():
                self._next_index += 1
            self.write_shard(self._next_index, self._buffer)
            self._next_index += 1
            self._buffer = []

    def close(self, info: dict | None = None) -> dict:
        """Flush, write manifest.json, and move the dataset onto its final path. Returns the manifest."""
        self._flush()
        shards = [shard_stats(p) for p in sorted((self.staging / "shards").glob("*.tar"))]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "num_samples": sum(s.num_samples for s in shards),
            "num_shards": len(shards),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(info or {}),
            "shards": [s.as_dict() for s in shards],
        }
        atomic_write_json(self.staging / MANIFEST, manifest)
        ensure_replaceable(self.root)  # something may have appeared there while we worked
        commit_dir(self.staging, self.root)
        self.closed = True
        self._unlock()
        return manifest

    def abort(self) -> None:
        remove_tree(self.staging)
        self.closed = True
        self._unlock()

    def release(self) -> None:
        """Give up the output (its lock) without committing or removing the staging folder: an interrupted
        resumable job leaves its finished shards for the next run."""
        self._unlock()

    def _unlock(self) -> None:
        if not self._lock.closed:
            release_lock(self._lock)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self.closed:
            self.release() if self.resume else self.abort()


class ShardReader:
    """Iterate the samples of a dataset directory, checking them against its manifest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.is_file():
            hint = " (an interrupted write left DIR.partial; re-run the command that makes it)" \
                if self.root.with_name(self.root.name + ".partial").exists() else ""
            raise ShardIntegrityError(f"{self.root}: not a qclip dataset, {MANIFEST} is missing{hint}")
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardIntegrityError(f"{mpath}: unreadable manifest ({e}); re-create the dataset") from None
        if self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise ShardIntegrityError(
                f"{mpath}: schema_version {self.manifest.get('schema_version')} is not {SCHEMA_VERSION}, "
                f"which this qclip reads; re-create the dataset with this version"
            )
        shards = self.manifest.get("shards")
        if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("path"), str)
                                                   for s in shards):
            raise ShardIntegrityError(f"{mpath}: no \"shards\" list of {{path, ...}} entries: not a qclip manifest "
                                      f"(another tool's schema?); ingest the data with `qclip ingest`")
        for s in shards:  # a shard path stays inside the dataset, as a tar member name must
            rel = PurePosixPath(s["path"])
            if rel.is_absolute() or ".." in rel.parts or "\\" in s["path"] or not rel.parts:
                raise ShardIntegrityError(f"{mpath}: shard path '{s['path']}' leaves the dataset folder; shard "
                                          f"paths are file names inside it (e.g. shard-00000.tar)")
        try:
            self.shards = [ShardInfo(**s) for s in shards]
        except TypeError as e:
            raise ShardIntegrityError(f"{mpath}: a shard entry does not match qclip's manifest schema ({e}); "
                                      f"re-create the dataset") from None
        missing = [s.path for s in self.shards if not (self.root / s.path).is_file()]
        if missing:
            raise ShardIntegrityError(f"{self.root}: shards listed in {MANIFEST} are missing: {', '.join(missing)}")

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def shard_urls(self) -> list[str]:
        return [str(self.root / s.path) for s in self.shards]

    def iter_shard(self, shard: ShardInfo, skips: SkipCounter | None = None) -> Iterator[Sample]:
        """Samples of one shard; a count that differs from the manifest raises ShardIntegrityError at the end."""
        path = self.root / shard.path
        n = 0
        for members in iter_tar_members(path, skips):
            n += 1
            try:
                yield Sample.from_members(members)
            except ValueError as e:
                if skips is None:
                    raise ShardIntegrityError(f"{path}: {e}") from None
                skips.skip("malformed sample", f"{shard.path}:{members.get('__key__')}")
        if n != shard.num_samples:
            raise ShardIntegrityError(
                f"{path} holds {n} samples but {MANIFEST} says {shard.num_samples}: the shard was truncated or "
                f"replaced after it was written; re-create the dataset (its command is in run.json)"
            )

    def __iter__(self) -> Iterator[Sample]:
        for shard in self.shards:
            yield from self.iter_shard(shard)

    def verify(self, check_hashes: bool = True, progress: Callable[[ShardInfo], None] | None = None) -> int:
        """Check every shard's sample count (and sha256); returns the total; raises on the first mismatch."""
        total = 0
        for s in self.shards:
            path = self.root / s.path
            if check_hashes:
                digest = file_sha256(path)
                if digest != s.sha256:
                    raise ShardIntegrityError(
                        f"{path}: sha256 {digest[:12]}… differs from {MANIFEST} ({s.sha256[:12]}…): the shard "
                        f"was modified or corrupted; re-create the dataset"
                    )
            n = sum(1 for _ in iter_tar_members(path))
            if n != s.num_samples:
                raise ShardIntegrityError(f"{path} holds {n} samples but {MANIFEST} says {s.num_samples}")
            total += n
            if progress:
                progress(s)
        return total


def is_dataset(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def dataset_dirs(root: str | Path) -> list[Path]:
    """Dataset directories directly under `root` (e.g. the world's splits), sorted."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and is_dataset(p))


def ensure_within(base: str | Path, target: str | Path) -> Path:
    """Resolve `target` and refuse it if it escapes `base` (untrusted names from tars, tables, JSON)."""
    base_r, t = Path(base).resolve(), Path(os.path.join(base, target)).resolve()
    if base_r != t and base_r not in t.parents:
        raise ValueError(f"path '{target}' points outside '{base}'")
    return t
