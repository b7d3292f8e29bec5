"""`qclip caption stats`: how raw alt-text and synthetic captions differ — length, vocabulary, CLIP scores.

Prints a table and, with an output folder, writes `caption_stats.json` and `caption_stats.png` (histograms of
caption length and CLIP score per caption kind, and vocabulary size).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..atomic import atomic_file, atomic_write_json
from ..data.shards import ShardReader
from ..models.vocab import words as tokens
from .score import caption_sets


def words(text: str) -> list[str]:
    """The caption's words: the word tokenizer's tokens without punctuation (one tokenisation for the project)."""
    return [t for t in tokens(text) if t.isalnum()]


def caption_stats(data: str | Path, max_samples: int = 0) -> dict:
    """{kind: {...}} for raw, reference and each captioner id; scores per scorer where present."""
    lengths: dict[str, list[int]] = {}
    vocab: dict[str, Counter] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    for i, s in enumerate(ShardReader(data)):
        if max_samples and i >= max_samples:
            break
        for kind, texts in caption_sets(s.captions).items():
            for t in texts:
                w = words(t)
                lengths.setdefault(kind, []).append(len(w))
                vocab.setdefault(kind, Counter()).update(w)
        for scorer, by_kind in (s.meta.get("scores") or {}).items():
            for kind, vals in by_kind.items():
                scores.setdefault(kind, {}).setdefault(scorer, []).extend(v for v in vals if v is not None)
    out = {}
    for kind, ls in lengths.items():
        a = np.asarray(ls)
        out[kind] = {"captions": len(ls), "empty": float((a == 0).mean()), "mean_words": float(a.mean()),
                     "median_words": float(np.median(a)), "vocabulary": len(vocab[kind]),
                     "top_words": [w for w, _ in vocab[kind].most_common(10)],
                     "lengths": ls,
                     "scores": {sc: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                                for sc, v in scores.get(kind, {}).items() if v}}
    return out


def format_stats(stats: dict) -> str:
    lines = [f"{'captions':<20}{'n':>8}{'empty':>8}{'words':>8}{'vocab':>8}{'CLIP score':>14}  top words"]
    for kind, v in stats.items():
        sc = "; ".join(f"{m['mean']:.3f}±{m['std']:.3f}" for m in v["scores"].values()) or "-"
        lines.append(f"{kind:<20}{v['captions']:>8}{v['empty']:>8.1%}{v['mean_words']:>8.1f}{v['vocabulary']:>8}"
                     f"{sc:>14}  {' '.join(v['top_words'][:6])}")
    return "\n".join(lines)


def plot_stats(stats: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    top = max(max(v["lengths"], default=0) for v in stats.values()) + 1
    for kind, v in stats.items():
        ax[0].hist(v["lengths"], bins=np.arange(0, top + 1) - 0.5, histtype="step", density=True, label=kind, lw=1.5)
        for scorer, m in v["scores"].items():
            ax[1].hist(m["values"], bins=40, histtype="step", density=True, lw=1.5,
                       label=kind if len(v["scores"]) == 1 else f"{kind} ({scorer})")
    ax[0].set(title="caption length", xlabel="words", ylabel="density")
    ax[1].set(title="CLIP score", xlabel="cosine(image, text)")
    if not any(v["scores"] for v in stats.values()):
        ax[1].text(0.5, 0.5, "no scores yet:\nqclip caption score", ha="center", va="center", transform=ax[1].transAxes)
    kinds = list(stats)
    ax[2].bar(range(len(kinds)), [stats[k]["vocabulary"] for k in kinds], color=[f"C{i}" for i in range(len(kinds))])
    ax[2].set(title="vocabulary (distinct words)", xticks=range(len(kinds)))
    ax[2].set_xticklabels(kinds, rotation=20, ha="right")
    for a in ax[:2]:
        if a.get_legend_handles_labels()[0]:  # no scores yet: nothing to label (matplotlib warns on an empty legend)
            a.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_stats(stats: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "caption_stats.json", stats)
    plot_stats(stats, out / "caption_stats.png")
    return out / "caption_stats.png"
