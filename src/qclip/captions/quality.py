"""Caption quality by the embedded world's own measure: which objects (colour + shape) a caption names.

For each caption of a world sample:
  recall  = visible objects whose colour and shape the caption names / visible objects
  wrong   = named colour+shape pairs that are not in the scene / named pairs
Shape words follow the world's vocabulary (`SHAPE_WORDS`: cube/block/box, sphere/ball, ...); a size word may
stand between colour and noun ("red big cube" counts as "red cube").
"""
from __future__ import annotations

import re
from pathlib import Path

from ..data.shards import ShardReader
from ..data.world import COLOURS, SHAPE_WORDS, SIZE_WORDS

_NOUN = {w: shape for shape, words in SHAPE_WORDS.items() for w in words}
_SIZES = "|".join(w for ws in SIZE_WORDS.values() for w in ws)
_PAIR = re.compile(rf"\b({'|'.join(COLOURS)})\s+(?:(?:{_SIZES})\s+)?({'|'.join(_NOUN)})s?\b")


def named_objects(text: str) -> set[tuple[str, str]]:
    return {(c, _NOUN[n]) for c, n in _PAIR.findall(text.lower())}


def caption_quality(text: str, scene: dict) -> tuple[float, float | None]:
    """(recall, wrong); wrong is None when the caption names no colour+shape pair."""
    visible = {(o["colour"], o["shape"]) for o in scene["objects"] if o["visible"]}
    present = {(o["colour"], o["shape"]) for o in scene["objects"]}
    named = named_objects(text)
    recall = len(visible & named) / len(visible) if visible else 1.0
    wrong = len(named - present) / len(named) if named else None
    return recall, wrong


def dataset_quality(data: str | Path, max_samples: int = 0) -> dict[str, dict]:
    """Mean recall / wrong fraction / empty rate per caption kind: raw, reference and each synthetic id."""
    acc: dict[str, dict] = {}

    def add(kind: str, texts: list[str], scene: dict) -> None:
        a = acc.setdefault(kind, {"captions": 0, "empty": 0, "recall": 0.0, "named": 0, "wrong": 0.0})
        for t in texts or [""]:
            a["captions"] += 1
            if not t:
                a["empty"] += 1
            r, w = caption_quality(t, scene)
            a["recall"] += r
            if w is not None:
                a["named"] += 1
                a["wrong"] += w

    for i, s in enumerate(ShardReader(data)):
        if max_samples and i >= max_samples:
            break
        scene = s.meta.get("scene")
        if scene is None:
            raise ValueError(f"{data}: sample {s.key} has no scene graph; the quality measure needs world data")
        caps = s.captions
        add("raw", caps.get("raw", []), scene)
        if caps.get("reference"):
            add("reference", caps["reference"], scene)
        for cid, texts in (caps.get("synthetic") or {}).items():
            add(f"synthetic:{cid}", texts, scene)
    return {k: {"captions": a["captions"], "objects_named_correctly": a["recall"] / a["captions"],
                "named_objects_wrong": a["wrong"] / a["named"] if a["named"] else 0.0,
                "empty": a["empty"] / a["captions"]} for k, a in acc.items()}


def format_quality(q: dict[str, dict]) -> str:
    lines = [f"{'captions':<24}{'n':>8}{'objects named correctly':>26}{'named objects wrong':>22}{'empty':>8}"]
    for k, v in q.items():
        lines.append(f"{k:<24}{v['captions']:>8}{v['objects_named_correctly']:>26.1%}"
                     f"{v['named_objects_wrong']:>22.1%}{v['empty']:>8.1%}")
    return "\n".join(lines)
