"""Zero-shot image<->text retrieval R@k on a qclip dataset, for any CLIP model open_clip can build."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.shards import ShardReader
from ..models import ClipBundle


def caption_for(meta: dict, source: str) -> str | None:
    caps = meta.get("captions", {})
    if source in ("raw", "reference"):
        texts = [t for t in caps.get(source, []) if t]
    else:
        texts = [t for t in caps.get("synthetic", {}).get(source, []) if t]
    return texts[0] if texts else None


@torch.no_grad()
def retrieval_metrics(bundle: ClipBundle, data: str | Path, text_source: str = "reference",
                      max_samples: int = 0, batch_size: int = 256, device: str = "cpu") -> dict:
    """R@1/5/10 in both directions, one caption per image (the first of `text_source`)."""
    model = bundle.model.to(device).eval()
    images, texts = [], []
    for s in ShardReader(data):
        text = caption_for(s.meta, text_source)
        if text is None:
            continue
        images.append(bundle.preprocess_val(s.pil()))
        texts.append(text)
        if max_samples and len(texts) >= max_samples:
            break
    if not texts:
        raise ValueError(f"{data}: no sample has a '{text_source}' caption to retrieve")
    img_f, txt_f = [], []
    for i in range(0, len(texts), batch_size):
        img_f.append(F.normalize(model.encode_image(torch.stack(images[i:i + batch_size]).to(device)).float(), dim=-1))
        txt_f.append(F.normalize(model.encode_text(bundle.tokenizer(texts[i:i + batch_size]).to(device)).float(), dim=-1))
    sim = torch.cat(img_f) @ torch.cat(txt_f).T
    n = sim.shape[0]
    target = torch.arange(n)
    out = {"n": n, "text_source": text_source, "chance_R@1": 1.0 / n}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = (s > s[target, target][:, None]).sum(1)  # how many candidates score above the true one
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    return out
