"""The study's figures: data-efficiency curves, a bar chart per task, training curves per objective, a run among
a reference run's seeds, caption examples."""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_file
from .findings import HEADLINE, aggregate, percent


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_file(path, "wb") as f:
        # tight: a legend or title wider than the axes is kept whole, not cut at the figure's edge (seen in a
        # browser: a one-panel figure lost the ends of its legend)
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1)
    _plt().close(fig)
    return path


# one colour per method in every figure, whatever subset a run has and however often it is re-rendered
METHOD_COLOURS = {"clip-synthetic": "#d62728", "clip-raw": "#1f77b4", "clip-mix": "#9467bd",
                  "clip-reference": "#8c564b", "random": "#7f7f7f", "supervised": "#2ca02c", "mim": "#ff7f0e"}


def method_colour(label: str) -> str:
    """The colour of the method a label names ("clip-raw", "qclip-mci-tiny clip-raw", "seed0/ENC-clip-raw")."""
    for m in sorted(METHOD_COLOURS, key=len, reverse=True):
        if label == m or label.endswith((" " + m, "-" + m, "/" + m)):
            return METHOD_COLOURS[m]
    return "#17becf"


def spread_note(seeds: int) -> str:
    """What an error bar is, said on every figure that draws one."""
    return f"error bars: ± 1 std over {seeds} seeds" if seeds > 1 else "one seed: no error bars"


def data_efficiency_plot(rows: list[dict], path: Path) -> Path:
    """Metric vs labelled fraction per (encoder, task), mean over seeds with the seed std as error bars; the
    x-axis is logarithmic and labelled with the measured fractions as percentages."""
    plt = _plt()
    agg = aggregate(rows)
    panels = sorted({(k[0], k[2]) for k in agg})
    seeds = max((v["n"] for v in agg.values()), default=1)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (enc, task) in zip(axes[0], panels):
        fractions = sorted({k[3] for k in agg if k[0] == enc and k[2] == task})
        for m in dict.fromkeys(k[1] for k in agg if k[0] == enc and k[2] == task):
            pts = sorted((k[3], v) for k, v in agg.items() if k[:3] == (enc, m, task))
            ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                        yerr=[p[1]["std"] for p in pts] if seeds > 1 else None, marker="o", capsize=3, label=m,
                        color=method_colour(m), lw=2.2 if m == "clip-synthetic" else 1.2)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [percent(f) for f in fractions])
        ax.minorticks_off()
        better = "higher" if HEADLINE[task][1] > 0 else "lower"
        ax.set(title=f"{enc}: {task}", xlabel="labelled training images (log scale)",
               ylabel=f"{HEADLINE[task][0]} ({better} is better)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(labels), 3 * len(panels))
    rows_ = -(-len(labels) // max(ncol, 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               title=spread_note(seeds), title_fontsize=8)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * rows_, 1, 1))
    return _save(fig, path)


def bar_chart(rows: list[dict], task: str, path: Path) -> Path:
    """The task's headline metric at the largest fraction per method: bars from zero, each with its value, and
    error bars (seed std) with several seeds, said in the title."""
    plt = _plt()
    agg = aggregate(rows)
    top = max((k[3] for k in agg if k[2] == task), default=1.0)
    encs = sorted({k[0] for k in agg if k[2] == task})
    methods = list(dict.fromkeys(k[1] for k in agg if k[2] == task))
    seeds = max((v["n"] for k, v in agg.items() if k[2] == task), default=1)
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * len(methods) * len(encs) / 2, 3.8))
    w = 0.8 / max(len(encs), 1)
    high = 0.0
    for j, enc in enumerate(encs):
        for i, m in enumerate(methods):
            v = agg.get((enc, m, task, top))
            if v is None:
                continue
            bars = ax.bar(i + j * w, v["mean"], w, yerr=v["std"] if seeds > 1 else None, capsize=2,
                          color=method_colour(m), alpha=1.0 if j == 0 else 0.6, edgecolor="black", linewidth=0.4)
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
            high = max(high, v["mean"] + v["std"])
    ax.set_ylim(0, high * 1.15 or 1.0)
    ax.set_xticks([i + w * (len(encs) - 1) / 2 for i in range(len(methods))])
    ax.set_xticklabels(methods, rotation=25, ha="right")
    better = "higher" if HEADLINE[task][1] > 0 else "lower"
    ax.set(ylabel=f"{HEADLINE[task][0]} ({better} is better)",
           title=f"{task}, {percent(top)} of the labels\n" + (", ".join(encs) if len(encs) == 1 else
                                                            f"bars per method: {', '.join(encs)}")
           + f"\n{spread_note(seeds)}")
    fig.tight_layout()
    return _save(fig, path)


# each pretraining objective's loss, named as the report names it (baselines record theirs as `objective`)
OBJECTIVES = {"clip": "CLIP (InfoNCE)", "siglip": "SigLIP (sigmoid)", "mae": "MAE (masked-patch MSE)",
              "spark": "SparK (masked-patch MSE)", "simmim": "SimMIM (masked-pixel L1)",
              "supervised": "supervised (multi-label BCE)", "boxes": "object boxes (per-cell cross-entropy)"}


def pretraining_objective(run_dir: Path) -> str:
    """The objective a pretraining folder trained with: the baseline's recorded `objective`, else CLIP's loss."""
    import yaml

    d = Path(run_dir)
    try:
        objective = json.loads((d / "summary.json").read_text()).get("objective")
    except (OSError, ValueError):
        objective = None
    if objective:
        return objective
    try:
        return (yaml.safe_load((d / "config.yaml").read_text()) or {}).get("pretrain", {}).get("loss", "clip")
    except (OSError, ValueError):
        return "clip"


def training_curves(runs: dict[str, Path], path: Path) -> Path:
    """runs: label -> pretraining folder with metrics.jsonl. One panel per objective the run trained with, each
    loss on its own axis in its own units (a contrastive loss and a reconstruction error share no scale)."""
    from ..train.pretrain import logged_losses

    plt = _plt()
    panels: dict[str, dict[str, list]] = {}
    for label, d in runs.items():
        pts = logged_losses(d)
        if pts:
            panels.setdefault(pretraining_objective(d), {})[label] = pts
    if not panels:
        panels = {"clip": {}}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.4), squeeze=False)
    seeds = len({label.split("/")[0] for label in runs})
    for ax, (objective, curves) in zip(axes[0], panels.items()):
        named = set()
        for label, pts in curves.items():
            name = label.split("/")[-1]  # one legend entry per method: its seeds share the colour
            ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], label=None if name in named else name,
                    lw=1, color=method_colour(label))
            named.add(name)
        ax.set(title=OBJECTIVES.get(objective, objective), xlabel="step", ylabel="training loss")
        ax.grid(alpha=0.3)
        if named:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle("pretraining loss, one panel per objective" + (f" (one line per seed, {seeds} seeds)" if seeds > 1
                                                               else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def reference_plot(placements: list[dict], path: Path, this_label: str, reference_label: str) -> Path:
    """Where this run's values fall among a reference run's seeds: per task a panel, per method the reference's
    seeds as open circles and this run's value as a filled diamond (placements: `reference.placements`)."""
    plt = _plt()
    panels = list(dict.fromkeys((p.get("dataset", ""), p["task"]) for p in placements))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + 1.0 * max(
        sum((p.get("dataset", ""), p["task"]) == k for p in placements) for k in panels) * len(panels), 3.8),
        squeeze=False)
    for ax, (dataset, task) in zip(axes[0], panels):
        ps = [p for p in placements if (p.get("dataset", ""), p["task"]) == (dataset, task)]
        for i, p in enumerate(ps):
            ref = p["reference"]
            ax.scatter([i] * len(ref), ref, facecolors="none", edgecolors="#555555", s=28, zorder=2)
            ax.scatter([i], [p["value"]], marker="D", s=44, color=method_colour(p["method"]), edgecolors="black",
                       linewidths=0.5, zorder=3)
        ax.set_xticks(range(len(ps)), [p["method"] for p in ps], rotation=25, ha="right")
        ax.set_xlim(-0.6, len(ps) - 0.4)
        metric = ps[0]["metric"]
        better = "higher" if HEADLINE[task][1] > 0 else "lower"
        ax.set(title=f"{dataset + ' ' if dataset else ''}{task}, {percent(ps[0]['fraction'])} of the labels",
               ylabel=f"{metric} ({better} is better)")
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", mfc="none", mec="#555555", label=reference_label),
               Line2D([], [], ls="", marker="D", mfc="#bbbbbb", mec="black", label=f"{this_label}, coloured by method")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path)


def probe_curves(transfer_dir: Path, path: Path) -> Path | None:
    """Training loss of every transfer head at the largest labelled fraction, one panel per task, seed 0 (or
    the first seed): whether each probe converged can be seen, not only read from `converged` in results.json."""
    runs: dict[str, dict[str, list[float]]] = {}
    for f in sorted(Path(transfer_dir).glob("*/*/*/metrics.json")):
        seed_dir, run_dir = f.parents[2].name, f.parents[1].name
        m = json.loads(f.read_text())
        if "train_loss" not in m or m.get("data_fraction") != 1.0:
            continue
        first_seed = min(p.name for p in Path(transfer_dir).iterdir() if p.is_dir())
        if seed_dir != first_seed:
            continue
        runs.setdefault(m["task"], {})[run_dir.rsplit("-", 1)[0]] = m["train_loss"]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.6), squeeze=False)
    for ax, (task, curves) in zip(axes[0], sorted(runs.items())):
        for label, loss in curves.items():
            ax.plot(range(len(loss)), loss, label=label, lw=1, color=method_colour(label))
        ax.set(title=f"{task} probe loss at the full labelled set", xlabel="logged step (subsampled)",
               ylabel="training loss")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def drawable(text: str) -> str:
    """`text` with what matplotlib's bundled DejaVu font cannot draw (emoji and other characters beyond the Basic
    Multilingual Plane, control characters) as "?": a user's alt-text often holds both."""
    return "".join(c if c.isprintable() and ord(c) <= 0xFFFF else "?" for c in text)


def caption_examples_figure(examples: list[dict], path: Path) -> Path:
    """Each example image beside its raw, synthetic and reference caption with their scores."""
    import io
    import textwrap

    from PIL import Image

    plt = _plt()
    fig, axes = plt.subplots(len(examples), 2, figsize=(11, 2.1 * len(examples)),
                             gridspec_kw={"width_ratios": [1, 6]}, squeeze=False)
    for (ax_img, ax_txt), e in zip(axes, examples):
        ax_img.imshow(Image.open(io.BytesIO(e["image"])).convert("RGB"))
        lines = []
        for kind in ("raw", "synthetic", "reference"):
            score = e.get("scores", {}).get(kind, "")
            text = f"{kind + ':':<11}{drawable(e[kind]) or '(empty)'}" + (f"   [{score}]" if score else "")
            # wrapped, not cut: 86 monospace characters at 8 pt fit the text column's width
            lines.append(textwrap.fill(text, 86, subsequent_indent=" " * 11, max_lines=3, placeholder=" ..."))
        ax_txt.text(0, 0.5, "\n".join(lines), va="center", fontsize=8, family="monospace")
        for ax in (ax_img, ax_txt):
            ax.axis("off")
    fig.suptitle("Captions of pool images: raw alt-text, the captioner's, and a reference description")
    fig.tight_layout()
    return _save(fig, path)
