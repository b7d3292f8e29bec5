"""Wall time of each stage of `qclip run` on a config (default: configs/demo.yaml), against a target in minutes.

    python benchmarks/study_time.py                                   # the demo, fresh, in a temp folder
    python benchmarks/study_time.py --out runs/t --config configs/demo.yaml study.seeds=3
    python benchmarks/study_time.py --results runs/demo/results.json  # read a finished run instead
    python benchmarks/study_time.py --results runs/full/results.json --target-minutes 60   # configs/full.yaml

Runs the study with `--fresh` (no cached stage may hide a cost) and reads the per-stage seconds that `qclip run`
itself records in results.json (`stage_seconds`). Prints every stage, the total per stage kind (world, captioner,
recaption, pretrain, transfer, the rest = evaluation + report + process start) and the wall time of the whole
command as measured here. A run that took stages from its stage cache lists them apart, with the seconds they took
when they ran (`stage_seconds_cached`), and does not count them in its total.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from qclip_cli import ROOT, qclip  # benchmarks/qclip_cli.py, beside this script


def by_kind(stages: dict[str, float]) -> dict[str, float]:
    """Seconds per stage kind: the first word of a stage's name (world, captioner, recaption, pretrain, transfer)."""
    kinds: dict[str, float] = defaultdict(float)
    for name, s in stages.items():
        kinds[name.split()[0]] += s
    return kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--out", default="", help="output folder (default: a new temp folder)")
    ap.add_argument("--results", default="", help="read this results.json instead of running")
    ap.add_argument("--target-minutes", type=float, default=15.0,
                    help="the time to meet: 15 for the demo, 60 for configs/full.yaml (issue targets)")
    ap.add_argument("overrides", nargs="*", help="config overrides passed to qclip run (key=value)")
    args = ap.parse_args()

    if args.results:
        results_file, wall = Path(args.results), None
    else:
        out = Path(args.out or tempfile.mkdtemp(prefix="qclip-study-"))
        t0 = time.time()
        qclip("run", "--config", args.config, "--out", str(out), "--fresh", *args.overrides)
        wall, results_file = time.time() - t0, out / "results.json"
    res = json.loads(results_file.read_text())
    stages: dict[str, float] = res["stage_seconds"]
    import torch

    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"results: {results_file}")
    print(f"{'stage':<52}{'seconds':>10}")
    for name, s in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"{name:<52}{s:>10.1f}")
    kinds = by_kind(stages)
    total = wall if wall is not None else res["wall_seconds"]
    kinds["rest (evaluation, report, start-up)"] = total - sum(stages.values())
    print(f"\n{'stage kind':<40}{'seconds':>10}{'share':>8}")
    for k, s in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{k:<40}{s:>10.1f}{s / total:>8.0%}")
    cached: dict[str, float] = res.get("stage_seconds_cached", {})
    if cached:
        print(f"\n{len(cached)} stages from the stage cache, not in the total above; seconds when they ran:")
        for k, s in sorted(by_kind(cached).items(), key=lambda kv: -kv[1]):
            print(f"{k:<40}{s:>10.1f}")
        print(f"{'sum':<40}{sum(cached.values()):>10.1f}")
    target_s = args.target_minutes * 60
    verdict = "within" if total <= target_s else "OVER"
    print(f"{'total' + (' (command wall time)' if wall is not None else ' (qclip run wall_seconds)'):<40}"
          f"{total:>10.1f}   {verdict} the {args.target_minutes:g}-minute target")


if __name__ == "__main__":
    main()
