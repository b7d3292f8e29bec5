"""How fast the `qclip` command answers when it has nothing to compute: `--help`, `SUB --help`, `--version` and
a config error, each a fresh process (best of `--repeat`), against `python -c pass` measured in the same run.
The target: every line under 1.5 s on a 2-core machine (heavy imports wait for the stage that needs them).

    python benchmarks/cli_latency.py
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["run", "--help"], ["transfer", "--help"], ["pretrain", "--help"],
            ["caption", "run", "--help"], ["pretrain", "--data", "d", "--out", "o", "pretrain.batch_sise=8"],
            ["world", "--out", "o", "seed=-1"]]


def best_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    anchor = best_of([sys.executable, "-c", "pass"], args.repeat)
    torch = best_of([sys.executable, "-c", "import torch"], args.repeat)
    print(f"machine: {os.cpu_count()} CPUs; best of {args.repeat}; anchor `python -c pass` {anchor:.3f} s, "
          f"`import torch` {torch:.2f} s")
    print(f"{'command':<58}{'s':>7}{'x anchor':>10}")
    for c in COMMANDS:
        s = best_of([sys.executable, "-m", "qclip", *c], args.repeat)
        print(f"{'qclip ' + ' '.join(c):<58}{s:>7.2f}{s / anchor:>10.1f}{'' if s < 1.5 else '   over 1.5 s'}")


if __name__ == "__main__":
    main()
