"""Caption quality of the in-repo captioner by the world's measure, with and without region supervision.

Runs the README's commands: `qclip world` (the config's curated and val splits), `qclip caption train` once per
`captioner.region_loss_weight`, `qclip caption run` on val, and prints objects named correctly / named objects
wrong for raw alt-text, the reference descriptions and each captioner's output, with the training seconds.

    python benchmarks/captioner_quality.py                      # configs/demo.yaml, weights 0 and 1
    python benchmarks/captioner_quality.py --weights 1 --set captioner.steps=500
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from qclip_cli import ROOT, qclip  # benchmarks/qclip_cli.py, beside this script

from qclip.captions.quality import dataset_quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="captioner.region_loss_weight values")
    ap.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE overrides for world and captioner")
    ap.add_argument("--out", default="", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="qclip_capq_"))
    world = out / "world"
    if not (world / "val").is_dir():
        qclip("world", "--out", str(world), "--quiet", "--config", args.config, "world.n_pool=64",
              "world.n_dense=0", *args.set)
    rows = []
    variant = hashlib.sha1(" ".join(args.set).encode()).hexdigest()[:8]  # other overrides: another run folder
    for w in args.weights:
        run = out / f"captioner_region{w:g}_{variant}"
        t0 = time.time()
        qclip("caption", "train", "--data", str(world / "curated"), "--out", str(run), "--quiet", "--config",
              args.config, f"captioner.region_loss_weight={w}", *args.set)
        seconds = time.time() - t0
        captioned = out / f"val_region{w:g}_{variant}"
        qclip("caption", "run", "--data", str(world / "val"), "--out", str(captioned), "--captioner",
              str(run / "model"), "--id", "tiny", "--quiet", "--config", args.config)
        q = dataset_quality(captioned)
        rows.append((w, seconds, json.loads((run / "summary.json").read_text())["steps"], q))
    q0 = rows[0][3]
    print(f"\nval: {q0['raw']['captions']} images; config {args.config} {' '.join(args.set)}\n")
    print("| captions | region loss weight | captioner steps | train s | objects named correctly | named objects wrong |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("raw", "reference"):
        print(f"| {kind} | | | | {q0[kind]['objects_named_correctly']:.1%} | {q0[kind]['named_objects_wrong']:.1%} |")
    for w, seconds, steps, q in rows:
        s = q["synthetic:tiny"]
        print(f"| synthetic | {w:g} | {steps} | {seconds:.0f} | {s['objects_named_correctly']:.1%} "
              f"| {s['named_objects_wrong']:.1%} |")


if __name__ == "__main__":
    main()
