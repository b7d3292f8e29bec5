"""The caption gain as a function of how informative the raw alt-text is: one study folder per
`world.alt_text_relevance`, each with clip-raw and clip-synthetic over the same seeds.

    python benchmarks/alt_text_dose.py runs/d2 runs/r30 runs/r15 --plot alt_text_dose.png

Reads each folder's results.json (written by `qclip run`): the raw alt-text's caption quality (objects named
correctly, the world's measure) and, at the largest labelled fraction, clip-synthetic vs clip-raw per seed as
qclip's report tests it (one-sided paired t-test, `qclip.report.findings.paired_test`; no multiple-test
correction here: a planning screen). Prints one row per folder; with --plot draws the two margins against the
alt-text's quality, a point per seed and the mean.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qclip.report.findings import aggregate, paired_test  # noqa: E402

TASKS = {"segmentation": ("mIoU", 1), "depth": ("RMSE", -1)}  # metric, sign (+1: higher is better)


def margins(results: dict) -> dict:
    """Per task: clip-synthetic vs clip-raw at the largest fraction (relative % per seed, positive = better)."""
    agg = aggregate(results["rows"])
    out = {}
    for task, (metric, sign) in TASKS.items():
        keys = [k for k in agg if k[2] == task and k[1] in ("clip-raw", "clip-synthetic")]
        if not keys:
            continue
        top = max(k[3] for k in keys)
        enc = keys[0][0]
        raw, syn = agg[(enc, "clip-raw", task, top)], agg[(enc, "clip-synthetic", task, top)]
        test = paired_test(syn["by_seed"], raw["by_seed"], sign)
        rel = [sign * (syn["by_seed"][s] / raw["by_seed"][s] - 1) * 100 for s in test["seeds"]]
        rnd = agg.get((enc, "random", task, top))
        out[task] = {"metric": metric, "raw": raw["mean"], "synthetic": syn["mean"], "random": rnd and rnd["mean"],
                     "rel_per_seed": rel, "rel_mean": sum(rel) / len(rel), "p": test["p"], "n": test["n"]}
    obj = aggregate(results["rows"], "object_mIoU")
    seg = [k for k in obj if k[2] == "segmentation"]
    if seg:
        top = max(k[3] for k in seg)
        out["object_mIoU"] = {k[1]: obj[k]["mean"] for k in seg if k[3] == top}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="study folders (results.json inside)")
    ap.add_argument("--plot", type=Path, help="write the figure here (PNG)")
    args = ap.parse_args()
    points = []
    print("| alt_text_relevance | alt-text names objects correctly | seeds | mIoU raw / synthetic / random "
          "| synthetic vs raw, mIoU | p | object mIoU raw / synthetic | RMSE raw / synthetic / random "
          "| synthetic vs raw, RMSE lower | p |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | --- | --- | ---: | ---: |")
    for run in args.runs:
        res = json.loads((run / "results.json").read_text())
        rel = res["config"]["world"]["alt_text_relevance"]
        named = res["caption_quality"]["raw"]["objects_named_correctly"]
        m = margins(res)
        s, d, o = m["segmentation"], m["depth"], m.get("object_mIoU", {})
        rnd = [f"{x['random']:.3f}" if x["random"] is not None else "-" for x in (s, d)]
        print(f"| {rel:g} | {named:.1%} | {s['n']} | {s['raw']:.3f} / {s['synthetic']:.3f} / {rnd[0]} "
              f"| {s['rel_mean']:+.1f}% | {s['p']:.3g} | {o.get('clip-raw', float('nan')):.3f} / "
              f"{o.get('clip-synthetic', float('nan')):.3f} | {d['raw']:.3f} / {d['synthetic']:.3f} / {rnd[1]} "
              f"| {d['rel_mean']:+.1f}% | {d['p']:.3g} |")
        points.append((named, s["rel_per_seed"], d["rel_per_seed"]))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        points.sort()
        for i, (label, colour) in enumerate((("segmentation mIoU gain", "tab:blue"),
                                             ("depth RMSE reduction", "tab:red"))):
            xs = [p[0] * 100 for p in points]
            for x, p in zip(xs, points):
                ax.scatter([x] * len(p[1 + i]), p[1 + i], color=colour, alpha=0.35, s=14)
            ax.plot(xs, [sum(p[1 + i]) / len(p[1 + i]) for p in points], "o-", color=colour, label=label)
        ax.axhline(12.1, ls=":", color="tab:blue", lw=1, label="paper: +12.1% mIoU")
        ax.axhline(11.5, ls=":", color="tab:red", lw=1, label="paper: 11.5% lower RMSE")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("raw alt-text: objects named correctly (%)")
        ax.set_ylabel("clip-synthetic vs clip-raw (%; + = better)")
        ax.set_title("Caption gain vs alt-text quality (a point per seed)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
