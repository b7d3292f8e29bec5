"""Skip-and-count: bad samples are dropped with a named reason, counted, and summarised at the end."""
from __future__ import annotations

from collections import Counter


class TooManyBadSamples(RuntimeError):
    """More samples were skipped than the configured fraction allows; no output was kept."""


class SkipCounter:
    """Counts skipped samples by reason and keeps a few examples of each, so errors can name files."""

    def __init__(self, max_examples: int = 3) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def skip(self, reason: str, where: str = "") -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if where and len(ex) < self.max_examples:
            ex.append(where)

    def merge(self, other: "SkipCounter") -> None:
        self.counts.update(other.counts)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: max(0, self.max_examples - len(mine))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts.most_common())

    def summary(self, verb: str, kept: int, seen: int) -> str:
        """One line: `ingested 9,812 of 10,000; skipped: 150 unreadable image, 38 empty caption`."""
        line = f"{verb} {kept:,} of {seen:,}"
        if self.counts:
            line += "; skipped: " + ", ".join(f"{n:,} {r}" for r, n in self.counts.most_common())
        return line

    def details(self) -> str:
        return "\n".join(
            f"  {n:,} {r}" + (f" (e.g. {', '.join(self.examples.get(r, []))})" if self.examples.get(r) else "")
            for r, n in self.counts.most_common()
        )

    def check_fraction(self, seen: int, max_fraction: float, stage: str) -> None:
        if seen and self.total / seen > max_fraction:
            raise TooManyBadSamples(
                f"{stage}: {self.total:,} of {seen:,} samples ({self.total / seen:.1%}) were bad, more than the "
                f"allowed {max_fraction:.1%}; nothing was written.\n{self.details()}\n"
                f"Fix the inputs listed above, or raise ingest.max_bad_fraction if these losses are acceptable."
            )
