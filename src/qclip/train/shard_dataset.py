"""Training data: image-text batches from qclip shards, in an order that is a pure function of (seed, epoch, step).

Why random access into the tars instead of webdataset's streaming pipeline: exact resume. A streaming
pipeline with shuffle buffers and several workers can only resume approximately; here the batch at any
step is known, so a run killed at step k restarts at step k and produces bitwise the same weights, with
any number of loader workers. Shards stay WebDataset tars (open_clip_train reads the same files); we read
each sample's members at their byte offsets, which is as fast as streaming on local disks.

Each rank reads a disjoint set of shards (rank r takes shards r, r+W, ...), as webdataset's split_by_node.
"""
from __future__ import annotations

import contextlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.images import BadImage, open_image
from ..data.policy import CaptionPolicy
from ..data.sample import IMAGE_EXTS
from ..data.shards import ShardReader, is_unsafe_member
from ..data.skips import SkipCounter
from ..distributed import rank_slice
from .distill import TEACHER_MEMBER, decode_npz


class TrainDataError(ValueError):
    """Training data that cannot be used as configured (no usable samples, too few shards for the ranks)."""


@dataclass
class IndexedSample:
    shard: int  # index into the dataset's shard paths
    key: str
    image: tuple[int, int]  # (byte offset, size) of the image member
    candidates: list[list[str]]  # the policy's candidate texts
    teacher: tuple[int, int] | None = None  # (offset, size) of KEY.teacher.npz, when distilling


def index_shard(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {extension: (offset, size)} from the tar headers (no member data is read)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    size = Path(path).stat().st_size
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isreg() or is_unsafe_member(m.name):
                continue
            if m.offset_data + m.size > size:  # tarfile reads headers only: a cut member looks whole
                raise tarfile.ReadError(f"member {m.name} is cut off at byte {size}")
            base = m.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, ext = base.split(".", 1)
            out.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
    return out


def has_raw_caption(meta: dict) -> bool:
    return any(t for t in (meta.get("captions", {}) or {}).get("raw", []))


def _read(f, span: tuple[int, int]) -> bytes:
    f.seek(span[0])
    return f.read(span[1])


class ClipShardDataset(Dataset):
    """Map-style dataset over the shards of one rank. Items are `(index, epoch)` pairs; the draw of captions
    and augmentations is seeded by (seed, epoch, index), so it is the same whatever worker computes it."""

    def __init__(self, root: str | Path, policy: CaptionPolicy, transform: Callable, tokenizer: Callable,
                 seed: int = 0, rank: int = 0, world_size: int = 1, teacher: bool = False,
                 cache_pixels: bool = False, cache_mb: float = 0.0, require_raw: bool = False) -> None:
        """cache_pixels: keep each transformed image in memory after its first use (per loader worker); only
        for a deterministic transform. The captioner's eval transform is, and it sees every image ~13 times.
        cache_mb: keep decoded images and tokenized captions after their first use, up to this many MB per
        loader worker (then the rest is decoded every time): a dataset that fits is decoded and tokenized once,
        not once per epoch (benchmarks/dataloader_throughput.py --cache-mb: one worker serves ~1.65x the
        samples in its second epoch). Batches are the same either way.
        require_raw: drop samples without a raw alt-text caption whatever the policy (`pretrain.require_raw_caption`)."""
        self.reader = ShardReader(root)
        self.policy, self.transform, self.tokenizer, self.seed = policy, transform, tokenizer, seed
        self.teacher = teacher
        n_shards = len(self.reader.shards)
        if n_shards < world_size:
            raise TrainDataError(
                f"{root} has {n_shards} shard(s) but there are {world_size} ranks; every rank needs its own "
                f"shards: re-write the dataset with a smaller shard_size"
            )
        self.shard_ids = list(range(rank, n_shards, world_size))
        self.paths = [str(self.reader.root / s.path) for s in self.reader.shards]
        self.skips = SkipCounter()
        self.samples: list[IndexedSample] = []
        for sid in self.shard_ids:
            members = self._index_checked(sid)
            with open(self.paths[sid], "rb") as f:
                for key, exts in members.items():
                    img_ext = next((e for e in IMAGE_EXTS if e in exts), None)
                    if img_ext is None or "json" not in exts:
                        self.skips.skip("incomplete sample", f"{self.paths[sid]}:{key}")
                        continue
                    try:
                        meta = json.loads(_read(f, exts["json"]).decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        self.skips.skip("malformed json", f"{self.paths[sid]}:{key}")
                        continue
                    cands, reason = policy.candidates(meta)
                    if require_raw and not has_raw_caption(meta):
                        cands, reason = None, "no raw caption"
                    if cands is None:
                        self.skips.skip(reason or "unusable", key)
                        continue
                    if teacher and TEACHER_MEMBER not in exts:
                        self.skips.skip("no teacher embeddings", key)
                        continue
                    self.samples.append(IndexedSample(sid, key, exts[img_ext], cands, exts.get(TEACHER_MEMBER)))
        self._files: dict[int, object] = {}
        self._pixels: dict[int, torch.Tensor] | None = {} if cache_pixels else None
        self._decoded: dict[int, Image.Image] = {}
        self._tokens: dict[tuple[str, ...], torch.Tensor] = {}
        self._cache_left = int(cache_mb * 1e6)  # bytes

    def _index_checked(self, sid: int) -> dict[str, dict[str, tuple[int, int]]]:
        """The shard's members, checked against the manifest's sample count: a damaged or truncated shard
        must not let a run train on less than the manifest says without a word."""
        path, expected = Path(self.paths[sid]), self.reader.shards[sid].num_samples
        fix = "re-create the dataset (or restore the shard) and check it with `ShardReader(PATH).verify()`"
        try:
            members = index_shard(path)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise TrainDataError(f"{path}: unreadable shard ({type(e).__name__}: {e}); {fix}") from e
        if len(members) != expected:
            raise TrainDataError(f"{path}: {len(members)} samples where the manifest says {expected} (damaged or "
                                 f"truncated shard); {fix}")
        return members

    def __len__(self) -> int:
        return len(self.samples)

    def shard_paths(self) -> list[str]:
        return [self.paths[i] for i in self.shard_ids]

    def _file(self, sid: int):
        f = self._files.get(sid)
        if f is None:
            f = self._files[sid] = open(self.paths[sid], "rb")
        return f

    def __getitem__(self, item: tuple[int, int]) -> tuple:
        index, epoch = item
        s = self.samples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        pixel_seed = int(rng.integers(2**62))  # drawn either way: the caption draw below stays the same
        pixels = self._pixels.get(index) if self._pixels is not None else None
        if pixels is None:
            pixels = self._load_pixels(index, s, pixel_seed)
            if self._pixels is not None:
                self._pixels[index] = pixels
        texts = self.policy.choose(s.candidates, rng)
        tokens = self._tokenize(texts)
        if not self.teacher:
            return pixels, tokens, index
        t = decode_npz(_read(self._file(s.shard), s.teacher))
        rows = {k: i for i, k in enumerate(t["text_keys"].tolist())}
        missing = [x for x in texts if x not in rows]
        if missing:
            raise TrainDataError(f"{self.paths[s.shard]}:{s.key}: no teacher embedding for caption {missing[0]!r}; "
                                 f"re-run `qclip teacher` after the captions changed")
        t_txt = torch.from_numpy(t["texts"][[rows[x] for x in texts]])
        return pixels, tokens, index, torch.from_numpy(t["image"]), t_txt, float(t["logit_scale"])

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        key = tuple(texts)
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self.tokenizer(texts)
            if self._cache_left >= tokens.nbytes:
                self._tokens[key] = tokens
                self._cache_left -= tokens.nbytes
        return tokens

    def _decode(self, index: int, s: IndexedSample) -> Image.Image:
        img = self._decoded.get(index)
        if img is not None:
            return img
        try:
            img = open_image(_read(self._file(s.shard), s.image))
        except BadImage as e:
            # a shard changed after indexing: name it rather than train on garbage
            raise TrainDataError(f"{self.paths[s.shard]}:{s.key}: {e}; verify the dataset (ShardReader.verify)")
        size = img.width * img.height * len(img.getbands())
        if self._cache_left >= size:
            self._decoded[index] = img
            self._cache_left -= size
        return img

    def _load_pixels(self, index: int, s: IndexedSample, seed: int) -> torch.Tensor:
        img = self._decode(index, s)
        with seeded_cpu_rng(seed):
            return self.transform(img)

    def __getstate__(self):  # open file handles do not cross into worker processes
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Torch's CPU random draws (a transform's crops) inside the block come from `seed`; the global stream
    outside is untouched. The same seed, the same crops."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed also queues CUDA seeding and records a stack trace,
        # which cost 0.9 ms per sample, 40% of the loader's time (benchmarks/RESULTS.md)
        torch.default_generator.manual_seed(seed)
        yield


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of `(index, epoch)`: a fresh permutation per epoch, `steps_per_epoch` full batches each,
    starting at global step `start_step`. Same (seed, rank) -> same batches, so resume is exact.

    `slice_of=(rank, world)`: the dataset is the whole one on every rank; each step draws one global batch of
    `batch_size * world` (the permutation of rank 0) and yields this rank's slice of it (pretrain.rank_data=global)."""

    def __init__(self, n: int, batch_size: int, steps_per_epoch: int, total_steps: int, seed: int, rank: int = 0,
                 start_step: int = 0, slice_of: tuple[int, int] | None = None) -> None:
        self.n, self.batch_size, self.steps_per_epoch = n, batch_size, steps_per_epoch
        self.total_steps, self.seed, self.rank, self.start_step = total_steps, seed, rank, start_step
        self.slice_of = slice_of
        if slice_of is not None:  # one global permutation: every rank draws rank 0's, at the global batch size
            self.rank, self.batch_size = 0, batch_size * slice_of[1]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while step < self.total_steps:
            epoch, k = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + self.rank)
            perm = torch.randperm(self.n, generator=g).tolist()
            for j in range(k, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                batch = perm[j * self.batch_size:(j + 1) * self.batch_size]
                if self.slice_of is not None:
                    lo, hi = rank_slice(len(batch), *self.slice_of)
                    batch = batch[lo:hi]
                yield [(i, epoch) for i in batch]
                step += 1


def collate(batch: list) -> dict[str, torch.Tensor]:
    out = {"images": torch.stack([b[0] for b in batch]),
           "texts": torch.stack([b[1] for b in batch]),  # B x n_texts x L
           "index": torch.tensor([b[2] for b in batch])}
    if len(batch[0]) > 3:  # teacher embeddings
        out["teacher_image"] = torch.stack([b[3] for b in batch])
        out["teacher_text"] = torch.stack([b[4] for b in batch]).flatten(0, 1)  # (B * n_texts) x D
        out["teacher_scale"] = torch.tensor(batch[0][5])
    return out


def steps_per_epoch(local_len: int, batch_size: int, world_size: int) -> int:
    """Full batches per epoch, the same on every rank (the smallest rank decides)."""
    n = torch.tensor([local_len // batch_size])
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
    return int(n.item())


def make_loader(ds: ClipShardDataset, batch_size: int, spe: int, total_steps: int, seed: int, rank: int,
                start_step: int, workers: int, slice_of: tuple[int, int] | None = None) -> DataLoader:
    sampler = EpochBatchSampler(len(ds), batch_size, spe, total_steps, seed, rank, start_step, slice_of)
    return DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=False, prefetch_factor=4 if workers else None)
