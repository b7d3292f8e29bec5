"""`CaptionPolicy`: which text a training sample sees.

  raw                 a raw alt-text caption (samples without one are dropped)
  reference           a reference description (the embedded world's human-quality text; an oracle)
  synthetic[:ID]      a synthetic caption (of captioner ID, or of any captioner)
  mix:P[:ID]          synthetic with probability P, else raw, per sample and epoch (MobileCLIP / LaCLIP)
  both[:ID]           one raw and one synthetic caption; the loop sums the two losses (DataCompDR)
  filter:T[:SCORER]   Nguyen et al.: keep the raw caption if its CLIP score >= T, else a synthetic caption
                      scoring >= T, else drop the sample

A policy is applied in two steps: `candidates(meta)` once per sample when the dataset is indexed (None drops
the sample, with a reason to count), then `choose(candidates, rng)` each time the sample is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("raw", "reference", "synthetic", "mix", "both", "filter")


class PolicyError(ValueError):
    """A policy spec that cannot be parsed; the message shows the valid forms."""


@dataclass(frozen=True)
class CaptionPolicy:
    kind: str
    captioner: str | None = None  # synthetic captions of this captioner id (None: all)
    p: float = 0.5  # mix
    threshold: float = 0.0  # filter
    scorer: str | None = None  # filter: scores of this scorer id (None: the only one)

    @property
    def num_texts(self) -> int:
        return 2 if self.kind == "both" else 1

    @classmethod
    def parse(cls, spec: str) -> "CaptionPolicy":
        forms = "raw, reference, synthetic[:ID], mix:P[:ID], both[:ID], filter:T[:SCORER]"
        parts = spec.split(":")
        kind, args = parts[0], parts[1:]
        try:
            if kind in ("raw", "reference") and not args:
                return cls(kind)
            if kind in ("synthetic", "both") and len(args) <= 1:
                return cls(kind, captioner=args[0] if args else None)
            if kind == "mix" and 1 <= len(args) <= 2:
                p = float(args[0])
                if not 0.0 <= p <= 1.0:
                    raise ValueError
                return cls(kind, p=p, captioner=args[1] if len(args) > 1 else None)
            if kind == "filter" and 1 <= len(args) <= 2:
                return cls(kind, threshold=float(args[0]), scorer=args[1] if len(args) > 1 else None)
        except ValueError:
            pass
        raise PolicyError(f"caption policy '{spec}' is not one of: {forms} (P in [0, 1])")

    # -- per sample ----------------------------------------------------------------------------------
    def _synthetic(self, caps: dict) -> list[str]:
        syn = caps.get("synthetic", {}) or {}
        ids = [self.captioner] if self.captioner else sorted(syn)
        return [t for i in ids for t in syn.get(i, []) if t]

    def candidates(self, meta: dict) -> tuple[list[list[str]] | None, str | None]:
        """([texts for slot 0, (slot 1)], None) or (None, reason the sample cannot be used)."""
        caps = meta.get("captions", {}) or {}
        raw = [t for t in caps.get("raw", []) if t]
        if self.kind == "raw":
            return ([raw], None) if raw else (None, "no raw caption")
        if self.kind == "reference":
            ref = [t for t in caps.get("reference", []) if t]
            return ([ref], None) if ref else (None, "no reference caption")
        syn = self._synthetic(caps)
        if self.kind == "synthetic":
            return ([syn], None) if syn else (None, "no synthetic caption")
        if self.kind == "mix":
            if not raw and not syn:
                return None, "no caption"
            return [raw, syn], None  # choose() picks a slot
        if self.kind == "both":
            if not raw:
                return None, "no raw caption"
            if not syn:
                return None, "no synthetic caption"
            return [raw, syn], None
        # filter
        scores = meta.get("scores", {}) or {}
        scorer = self.scorer or (sorted(scores)[0] if len(scores) == 1 else None)
        if scorer is None or scorer not in scores:
            return None, "no caption scores"
        sc = scores[scorer]
        raw_all = caps.get("raw", [])
        keep_raw = [t for t, s in zip(raw_all, sc.get("raw", [])) if t and s >= self.threshold]
        if keep_raw:
            return [keep_raw], None
        syn_src = caps.get("synthetic", {}) or {}
        ids = [self.captioner] if self.captioner else sorted(syn_src)
        keep_syn = [t for i in ids for t, s in zip(syn_src.get(i, []), sc.get(i, [])) if t and s >= self.threshold]
        return ([keep_syn], None) if keep_syn else (None, "below score threshold")

    def choose(self, cands: list[list[str]], rng: np.random.Generator) -> list[str]:
        """The text(s) for one draw of the sample."""
        def pick(texts: list[str]) -> str:
            return texts[int(rng.integers(len(texts)))]

        if self.kind == "mix":
            raw, syn = cands
            use_syn = bool(syn) and (not raw or rng.random() < self.p)
            return [pick(syn if use_syn else raw)]
        if self.kind == "both":
            return [pick(cands[0]), pick(cands[1])]
        return [pick(cands[0])]
