"""One image-text sample as stored in a shard (schema in docs/DESIGN.md, "Data").

Members of sample KEY in a tar shard:
  KEY.jpg|png|webp   the image
  KEY.json           {"key", "captions": {"raw": [..], "reference": [..], "synthetic": {id: [..]}},
                      "scores": {scorer: {"raw": [..], id: [..]}}, "source", "width", "height", ...}
  KEY.txt            one default caption, so `open_clip_train --dataset-type webdataset` trains on it unchanged
  KEY.seg.png        optional class-id mask (uint8, or uint16 above 255 classes)
  KEY.depth.npy      optional depth in metres (float32); `KEY.depth.png` (uint16 millimetres) is read too
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def safe_key(text: str) -> str:
    """A WebDataset key: no dots (they start the extension), no slashes, no path tricks."""
    key = _KEY_UNSAFE.sub("_", text).strip("_")
    return key or "sample"


def _strings(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(c, str) for c in x)


def check_meta(key: str, meta: Any) -> None:
    """KEY.json against the documented schema (the types of captions and scores), so a hand-made dataset whose
    `captions.raw` is a string is refused by name instead of trained on one character at a time."""
    def bad(where: str, want: str, got: Any) -> ValueError:
        return ValueError(f"sample '{key}': KEY.json {where} must be {want}, got {type(got).__name__} "
                          f"({json.dumps(got)[:60]}); see docs/DESIGN.md, data schema")

    if not isinstance(meta, dict):
        raise bad("", "an object", meta)
    caps = meta.get("captions", {})
    if not isinstance(caps, dict):
        raise bad("captions", "an object {raw: [...], synthetic: {id: [...]}}", caps)
    for field_name in ("raw", "reference"):
        if field_name in caps and not _strings(caps[field_name]):
            raise bad(f"captions.{field_name}", "a list of strings", caps[field_name])
    syn = caps.get("synthetic", {})
    if not isinstance(syn, dict) or not all(_strings(v) for v in syn.values()):
        raise bad("captions.synthetic", "an object of id -> list of strings", syn)
    scores = meta.get("scores", {})
    if not isinstance(scores, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, list) and all(n is None or isinstance(n, (int, float))
                                                                    for n in x)
                                        for x in v.values()) for v in scores.values()):
        raise bad("scores", "an object of scorer -> {caption set: [numbers]}", scores)


def empty_captions() -> dict:
    return {"raw": [], "reference": [], "synthetic": {}}


@dataclass
class Sample:
    key: str
    image: bytes  # encoded image bytes
    image_ext: str  # jpg | png | webp
    meta: dict = field(default_factory=dict)  # the KEY.json record
    seg: np.ndarray | None = None  # HxW integer class ids
    depth: np.ndarray | None = None  # HxW float32 metres
    extra: dict[str, bytes] = field(default_factory=dict)  # other members, kept verbatim (e.g. teacher embeddings)

    @property
    def captions(self) -> dict:
        return self.meta.setdefault("captions", empty_captions())

    def pil(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image)).convert("RGB")

    def default_caption(self) -> str:
        """Text for KEY.txt: first non-empty raw caption, else reference, else synthetic, else ''."""
        caps = self.captions
        for text in caps.get("raw", []):
            if text:
                return text
        for text in caps.get("reference", []):
            if text:
                return text
        for texts in caps.get("synthetic", {}).values():
            for text in texts:
                if text:
                    return text
        return ""

    # -- tar members ---------------------------------------------------------------------------------
    def to_members(self, txt: str | None = None) -> dict[str, Any]:
        meta = dict(self.meta)
        meta["key"] = self.key
        meta.setdefault("captions", empty_captions())
        meta.setdefault("scores", {})
        members: dict[str, Any] = {
            "__key__": self.key,
            self.image_ext: self.image,
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
            "txt": (self.default_caption() if txt is None else txt).encode("utf-8"),
        }
        if self.seg is not None:
            seg = np.asarray(self.seg)
            if seg.min() < 0 or seg.max() > 65535:
                raise ValueError(f"{self.key}: segmentation ids must be in [0, 65535]")
            dtype = np.uint8 if seg.max() < 256 else np.uint16
            buf = io.BytesIO()
            Image.fromarray(seg.astype(dtype)).save(buf, format="PNG", compress_level=1)
            members["seg.png"] = buf.getvalue()
        if self.depth is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(self.depth, dtype=np.float32), allow_pickle=False)
            members["depth.npy"] = buf.getvalue()
        for k, v in self.extra.items():
            members[k] = v
        return members

    @classmethod
    def from_members(cls, members: dict[str, Any]) -> "Sample":
        """Inverse of `to_members`; raises ValueError naming what is missing or malformed."""
        key = members["__key__"]
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            raise ValueError(f"sample '{key}' has no image member (.jpg/.png/.webp)")
        meta: dict = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"sample '{key}': KEY.json is not valid UTF-8 JSON ({e})") from None
            check_meta(key, meta)
        seg = depth = None
        if "seg.png" in members:
            seg = np.asarray(Image.open(io.BytesIO(members["seg.png"])))
        if "depth.npy" in members:
            depth = np.load(io.BytesIO(members["depth.npy"]), allow_pickle=False).astype(np.float32)
        elif "depth.png" in members:
            depth = np.asarray(Image.open(io.BytesIO(members["depth.png"]))).astype(np.float32) / 1000.0
        known = {"__key__", "__url__", "__local_path__", ext, "json", "txt", "seg.png", "depth.npy", "depth.png"}
        extra = {k: v for k, v in members.items() if k not in known and not k.startswith("__")}
        return cls(key=key, image=members[ext], image_ext="jpg" if ext == "jpeg" else ext, meta=meta,
                   seg=seg, depth=depth, extra=extra)
