"""Per-seed values of a finished study, as the markdown rows benchmarks/RESULTS.md and the README quote.

The report (`qclip report`) gives means ± std and the paired tests; RESULTS.md's tables also show each seed, so a
reader sees a bimodal baseline or one seed that learned nothing. This prints them from results.json, so those
numbers are read by code in the repository rather than copied by hand.

    python benchmarks/seed_table.py runs/h3600/results.json
    python benchmarks/seed_table.py runs/e3600/results.json --fraction 0.1 --metrics mIoU RMSE
    python benchmarks/seed_table.py runs/full/results.json --encoder qclip-vit-tiny --summary mean_std

A cell is `s0 / s1 / ... = mean` (seeds in order), or with `--summary mean_std` the README's `mean ± std` (sample
standard deviation, as the report's). Metrics: mIoU and object_mIoU read segmentation rows, RMSE depth rows.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from qclip.report.findings import one_encoder, seed_values

TASK_OF = {"mIoU": "segmentation", "object_mIoU": "segmentation", "RMSE": "depth"}
LABEL = {"mIoU": "mIoU", "object_mIoU": "object mIoU", "RMSE": "depth RMSE"}


def cell(values: list[float], summary: str) -> str:
    if not values:
        return "-"
    if summary == "mean_std":
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {std:.3f}"
    return " / ".join(f"{v:.3f}" for v in values) + f" = {statistics.mean(values):.3f}"


def table(rows: list[dict], metrics: list[str], fraction: float, summary: str) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows if r["task"] in TASK_OF.values()))
    head = [f"{LABEL[m]}" + ("" if math.isclose(fraction, 1.0) else f" @{fraction:g}") for m in metrics]
    lines = ["| method | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(metrics)]
    for method in methods:
        cells = [cell(list(seed_values(rows, method, TASK_OF[m], fraction, m).values()), summary) for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results.json of a finished study")
    ap.add_argument("--metrics", nargs="+", default=["mIoU", "object_mIoU", "RMSE"], choices=sorted(TASK_OF))
    ap.add_argument("--fraction", type=float, default=1.0, help="labelled fraction to read (default: all labels)")
    ap.add_argument("--encoder", default="", help="the encoder to read (required when the study has several)")
    ap.add_argument("--summary", choices=("seeds", "mean_std"), default="seeds")
    args = ap.parse_args()
    rows = json.loads(args.results.read_text())["rows"]
    try:
        rows = one_encoder(rows, args.encoder, str(args.results))
    except ValueError as e:
        raise SystemExit(f"{e} with --encoder") from None
    seeds = sorted({r.get("seed", 0) for r in rows})
    shown = "each seed, then the mean" if args.summary == "seeds" else "mean ± std over seeds"
    print(f"{args.results}: seeds {', '.join(map(str, seeds))}; {shown}")
    print(table(rows, args.metrics, args.fraction, args.summary))


if __name__ == "__main__":
    main()
