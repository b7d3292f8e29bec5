"""The caption gain as a function of how informative the raw alt-text is: one study folder per
`world.alt_text_relevance`, each with clip-raw and clip-synthetic over the same seeds.

    python benchmarks/alt_text_dose.py runs/r30 runs/r45 runs/d2 --plot benchmarks/alt_text_dose.png

Reads each folder's results.json (written by `qclip run`): the raw alt-text's caption quality (objects named
correctly, the world's measure) and, at the largest labelled fraction, the report's own checks
(`qclip.report.findings.checks`): clip-synthetic vs clip-raw as the relative change of the seed means and the
one-sided paired t-test's p before Holm (a planning screen, no correction here). Prints one row per folder; with
--plot draws the two margins against the alt-text's quality: the mean and, per seed, the paired difference in
percent of clip-raw's mean.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qclip.report.findings import aggregate, checks  # noqa: E402

TASKS = ("segmentation", "depth")


def margins(results: dict) -> dict:
    """Per task, the report's own checks at the largest fraction: clip-synthetic vs clip-raw (mean_a / mean_b,
    rel_pct, p, per-seed paired differences) and clip-raw vs random init (mean_b: random init's mean)."""
    by_name = {(c["task"], c["a"], c["b"]): c for c in checks(results["rows"]) if c["kind"] != "labels"}
    out = {}
    for task in TASKS:
        gain, sanity = by_name.get((task, "clip-synthetic", "clip-raw")), by_name.get((task, "clip-raw", "random"))
        if gain:
            out[task] = {**gain, "random": sanity["mean_b"] if sanity else None}
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
        print(f"| {rel:g} | {named:.1%} | {s['n']} | {s['mean_b']:.3f} / {s['mean_a']:.3f} / {rnd[0]} "
              f"| {s['rel_pct']:+.1f}% | {s['p']:.3g} | {o.get('clip-raw', float('nan')):.3f} / "
              f"{o.get('clip-synthetic', float('nan')):.3f} | {d['mean_b']:.3f} / {d['mean_a']:.3f} / {rnd[1]} "
              f"| {d['rel_pct']:+.1f}% | {d['p']:.3g} |")
        points.append((named, s, d))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        points.sort()
        for i, (label, colour) in enumerate((("segmentation mIoU gain", "tab:blue"),
                                             ("depth RMSE reduction", "tab:red"))):
            xs = [p[0] * 100 for p in points]
            for x, p in zip(xs, points):  # per seed: the paired difference in % of clip-raw's mean
                c = p[1 + i]
                ax.scatter([x] * c["n"], [v / abs(c["mean_b"]) * 100 for v in c["diffs"]], color=colour,
                           alpha=0.35, s=14)
            ax.plot(xs, [p[1 + i]["rel_pct"] for p in points], "o-", color=colour, label=label)
        ax.axhline(12.1, ls=":", color="tab:blue", lw=1, label="paper: +12.1% mIoU")
        ax.axhline(11.5, ls=":", color="tab:red", lw=1, label="paper: 11.5% lower RMSE")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("raw alt-text: objects named correctly (%)")
        ax.set_ylabel("clip-synthetic vs clip-raw (%; + = better)")
        ax.set_title("Caption gain vs alt-text quality (points: paired difference per seed)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"figure: {args.plot}")


if __name__ == "__main__":
    main()
