"""Nested data fractions: one seeded permutation, and fraction f takes its first ceil(f * N) items, so the 10%
set is inside the 100% set and curves over fractions compare like with like."""
from __future__ import annotations

import math


def parse_fractions(text: str | list[float]) -> list[float]:
    vals = [float(x) for x in text.split(",")] if isinstance(text, str) else [float(x) for x in text]
    bad = [v for v in vals if not 0 < v <= 1]
    if bad or not vals:
        raise ValueError(f"data fractions must lie in (0, 1], got {bad or 'none'}; e.g. --data-fractions 0.1,1.0")
    return sorted(set(vals))


def nested_subset(n: int, fraction: float, seed: int) -> list[int]:
    if not 0 < fraction <= 1:
        raise ValueError(f"data fraction must lie in (0, 1], got {fraction}")
    import torch  # here, not at the top: `qclip transfer` parses --data-fractions before it imports torch

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:max(1, math.ceil(fraction * n))])
