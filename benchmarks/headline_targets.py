"""The targets the headline study is held to ("its pretraining must learn": object mIoU against random init, the
paper's margins, more labels never hurting) read off finished studies, on seed means (and, for
whether each pretraining learned shapes, per seed).

    python benchmarks/headline_targets.py runs/d3/results.json
    python benchmarks/headline_targets.py runs/d2/results.json runs/d0/results.json   # methods from two studies

Used to choose budgets on the `dev` split: the rule is written down first (benchmarks/RESULTS.md), then this script
counts how many targets hold. It compares means, not paired tests: the study's own checks (`qclip report`) are the
evidence; this is the planning screen. With several files, a method is read from the first file that has it.
A study of several encoders (configs/full.yaml) is scored one encoder at a time:

    python benchmarks/headline_targets.py runs/full/results.json --encoder qclip-vit-tiny
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from qclip.report.findings import one_encoder, seed_values
from qclip.report.page import SHAPES_ABOVE, shape_learning_ratios

RANDOM, RAW, SYNTH, MIM, SUPERVISED = "random", "clip-raw", "clip-synthetic", "mim", "supervised"


def load_rows(paths: list[Path], encoder: str = "") -> list[dict]:
    """One encoder's rows, each method from the first file that has it."""
    rows: list[dict] = []
    seen: set[str] = set()
    for path in paths:
        file_rows = one_encoder(json.loads(path.read_text())["rows"], encoder, str(path))
        new = {r["method"] for r in file_rows} - seen
        rows += [r for r in file_rows if r["method"] in new]
        seen |= new
    if len({r["encoder"] for r in rows}) > 1:
        raise ValueError(f"{', '.join(map(str, paths))} hold different encoders; pick one")
    return rows


def criteria(rows: list[dict]) -> list[tuple[str, bool, str]]:
    def mean(method: str, task: str, fraction: float = 1.0, key: str | None = None) -> float:
        vals = seed_values(rows, method, task, fraction, key)
        return statistics.mean(vals.values()) if vals else math.nan

    out: list[tuple[str, bool, str]] = []
    obj = {m: mean(m, "segmentation", key="object_mIoU") for m in (SYNTH, SUPERVISED, RANDOM)}
    out.append(("1 clip-synthetic object mIoU >= 2x random", obj[SYNTH] >= 2 * obj[RANDOM],
                f"{obj[SYNTH]:.3f} vs {obj[RANDOM]:.3f} ({obj[SYNTH] / obj[RANDOM]:.2f}x)"))
    out.append(("1 clip-synthetic object mIoU >= 0.40", obj[SYNTH] >= 0.40, f"{obj[SYNTH]:.3f}"))
    out.append(("1 supervised object mIoU >= 2x random", obj[SUPERVISED] >= 2 * obj[RANDOM],
                f"{obj[SUPERVISED]:.3f} ({obj[SUPERVISED] / obj[RANDOM]:.2f}x)"))
    for method in (RAW, MIM, SUPERVISED):
        a, b = mean(method, "segmentation"), mean(RANDOM, "segmentation")
        out.append((f"1 {method} beats random, segmentation", a > b, f"mIoU {a:.3f} vs {b:.3f}"))
        a, b = mean(method, "depth"), mean(RANDOM, "depth")
        out.append((f"1 {method} beats random, depth", a < b, f"RMSE {a:.3f} vs {b:.3f}"))
    a, b = mean(SYNTH, "segmentation"), mean(RAW, "segmentation")
    out.append(("2 clip-synthetic vs clip-raw >= +12% mIoU", a >= 1.12 * b, f"{a:.3f} vs {b:.3f} ({a / b - 1:+.1%})"))
    a, b = mean(SYNTH, "depth"), mean(RAW, "depth")
    out.append(("2 clip-synthetic vs clip-raw >= 11.5% lower RMSE", a <= 0.885 * b,
                f"{a:.3f} vs {b:.3f} ({1 - a / b:.1%} lower)"))
    a, b = mean(SYNTH, "segmentation"), mean(MIM, "segmentation")
    out.append(("2 clip-synthetic vs mim >= +12.1% mIoU", a >= 1.121 * b, f"{a:.3f} vs {b:.3f} ({a / b - 1:+.1%})"))
    a, b = mean(SYNTH, "depth"), mean(MIM, "depth")
    out.append(("2 clip-synthetic beats mim, depth", a < b, f"RMSE {a:.3f} vs {b:.3f}"))
    a, b = mean(SYNTH, "segmentation", 0.1), mean(RAW, "segmentation")
    out.append(("2 clip-synthetic @10% >= clip-raw @100%, segmentation", a >= b, f"mIoU {a:.3f} vs {b:.3f}"))
    a, b = mean(SYNTH, "depth", 0.1), mean(RAW, "depth")
    out.append(("2 clip-synthetic @10% >= clip-raw @100%, depth", a <= b, f"RMSE {a:.3f} vs {b:.3f}"))
    # per seed, as the report's "Did the pretraining learn shapes?" table: a mean hides a seed that learned nothing
    ratios = shape_learning_ratios(rows)
    low = [f"{m} seed {', '.join(str(s) for s, x in r if x < SHAPES_ABOVE)}" for (_, m), r in ratios.items()
           if any(x < SHAPES_ABOVE for _, x in r)]
    out.append((f"1 every pretraining learns shapes in every seed (object mIoU >= {SHAPES_ABOVE}x random's)",
                bool(ratios) and not low, "; ".join(low) or f"all {len(ratios)} methods"))
    methods = sorted({r["method"] for r in rows})
    worse = [m for m in methods if mean(m, "segmentation") < mean(m, "segmentation", 0.1)
             or mean(m, "depth") > mean(m, "depth", 0.1)]
    out.append(("3 100% of labels >= 10% for every method", not worse, ", ".join(worse) or f"all {len(methods)}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results.json of finished studies")
    ap.add_argument("--encoder", default="", help="score this encoder's rows (required when a study has several)")
    args = ap.parse_args()
    try:
        rows = load_rows(args.results, args.encoder)
    except ValueError as e:
        raise SystemExit(f"{e} with --encoder") from None
    found = criteria(rows)
    for name, ok, detail in found:
        print(f"{'holds' if ok else 'FAILS'}  {name}: {detail}")
    seeds = {m: len({r.get("seed", 0) for r in rows if r["method"] == m}) for m in sorted({r["method"] for r in rows})}
    print(f"{sum(ok for _, ok, _ in found)} of {len(found)} hold; seeds per method: {seeds}")


if __name__ == "__main__":
    main()
