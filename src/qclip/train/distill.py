"""Teacher embeddings for distillation (MobileCLIP's reinforced training: loss = λ·KD + (1-λ)·CLIP).

`qclip teacher --data DIR --model SPEC --out DIR2` copies a dataset, adding to each sample a member
`KEY.teacher.npz` with the teacher's normalised embeddings:
  image        (D,)   of the image as stored (MobileCLIP also stores one per augmentation; we store one)
  texts        (T, D) of every caption of the sample (raw, reference, synthetic)
  text_keys    (T,)   those captions, so the loader finds the embedding of the caption it drew
  logit_scale  ()     the teacher's temperature
Training with `pretrain.distill_weight=λ > 0` uses open_clip's DistillClipLoss against them.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.sample import Sample
from ..data.shards import ShardReader, ShardWriter
from ..models import ClipBundle

TEACHER_MEMBER = "teacher.npz"


def all_captions(meta: dict) -> list[str]:
    caps = meta.get("captions", {}) or {}
    texts = list(caps.get("raw", [])) + list(caps.get("reference", []))
    for cid in sorted(caps.get("synthetic", {}) or {}):
        texts += caps["synthetic"][cid]
    return list(dict.fromkeys(t for t in texts if t))  # unique, in order


def encode_npz(image: np.ndarray, texts: np.ndarray, keys: list[str], logit_scale: float) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, image=image.astype(np.float32), texts=texts.astype(np.float32),
             text_keys=np.array(keys, dtype=str), logit_scale=np.float32(logit_scale))
    return buf.getvalue()


def decode_npz(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@torch.no_grad()
def write_teacher_embeddings(src: str | Path, dst: str | Path, teacher: ClipBundle, batch_size: int = 64,
                             progress: bool = True) -> dict:
    reader = ShardReader(src)
    model = teacher.model.eval()
    scale = float(model.logit_scale.exp())
    t0 = time.time()
    n = 0
    bar = tqdm(total=len(reader), desc="teacher", unit="img", disable=not progress)
    with ShardWriter(dst, prefix="data", shard_size=max(s.num_samples for s in reader.shards)) as writer:
        batch: list[Sample] = []

        def flush() -> None:
            images = torch.stack([teacher.preprocess_val(s.pil()) for s in batch])
            img = F.normalize(model.encode_image(images).float(), dim=-1).numpy()
            for s, e in zip(batch, img):
                keys = all_captions(s.meta)
                txt = F.normalize(model.encode_text(teacher.tokenizer(keys)).float(), dim=-1).numpy() if keys \
                    else np.zeros((0, e.shape[0]), np.float32)
                s.extra[TEACHER_MEMBER] = encode_npz(e, txt, keys, scale)
                writer.write(s)
            bar.update(len(batch))
            batch.clear()

        for s in reader:
            batch.append(s)
            n += 1
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        info = {k: v for k, v in reader.manifest.items() if k not in ("shards", "num_samples", "num_shards", "created")}
        writer.close({**info, "teacher": {"logit_scale": scale}})
    bar.close()
    return {"samples": n, "seconds": round(time.time() - t0, 2), "out": str(dst)}
