"""Training throughput: `qclip pretrain` vs `open_clip_train.main` on the same model, batch, shards and steps.

    python benchmarks/pretrain_throughput.py                      # tiny preset + ViT-B-16 at 64 px, CPU
    python benchmarks/pretrain_throughput.py --models ViT-B-16 --image-size 224 --batch-size 256 --steps 50 \
        --device cuda --precision bf16 --peak-tflops 989             # on an H100: adds MFU
    python benchmarks/pretrain_throughput.py --models qclip-mci-tiny --compile --skip 10   # torch.compile in both

Both runs read the same qclip shards (open_clip_train through its webdataset pipeline, qclip through its
exact-resume loader) with the same number of loader workers; images/s is averaged over the steps after
`--skip` warm-up steps, from each trainer's own per-step log. Prints a table and the ratio qclip / open_clip.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qclip_cli import ROOT, qclip  # benchmarks/qclip_cli.py, beside this script

sys.path.insert(0, str(ROOT / "src"))
from flops import train_flops_per_sample  # noqa: E402  (benchmarks/flops.py, beside this script)


def model_dir(name: str, image_size: int, tmp: Path) -> Path:
    """An open_clip `local-dir:` folder holding the model config, so both trainers build the same model."""
    from qclip.models import resolve_model_cfg

    _, cfg = resolve_model_cfg(name, image_size=image_size)
    d = tmp / f"model-{name}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return d


def run_qclip(data: Path, mdir: Path, out: Path, args) -> list[float]:
    qclip("pretrain", "--data", str(data), "--out", str(out), "--quiet",
          f"pretrain.model=local-dir:{mdir}", f"pretrain.batch_size={args.batch_size}", f"pretrain.steps={args.steps}",
          "pretrain.log_every=1", f"pretrain.checkpoint_every={args.steps}", f"pretrain.workers={args.workers}",
          "pretrain.caption_policy=raw", f"pretrain.precision={args.precision}", "pretrain.warmup_steps=1",
          f"pretrain.compile={str(args.compile).lower()}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["images_per_s"] for r in rows]


def run_open_clip(data: Path, mdir: Path, out: Path, args) -> list[float]:
    shards = sorted((data / "shards").glob("*.tar"))
    first, last = shards[0].stem.rsplit("-", 1)[1], shards[-1].stem.rsplit("-", 1)[1]
    prefix = shards[0].stem.rsplit("-", 1)[0]
    pattern = str(data / "shards" / f"{prefix}-{{{first}..{last}}}.tar")
    precision = "amp_bf16" if args.precision == "bf16" else "fp32"
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", pattern, "--dataset-type", "webdataset",
           "--train-num-samples", str(args.steps * args.batch_size), "--batch-size", str(args.batch_size),
           "--epochs", "1", "--workers", str(args.workers), "--model", f"local-dir:{mdir}", "--logs", str(out),
           "--name", "bench", "--log-every-n-steps", "1", "--precision", precision, "--warmup", "1",
           "--save-frequency", "0", "--device", "cuda" if args.device == "cuda" else "cpu"]
    if args.compile:
        cmd.append("--torchcompile")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    log = (out / "bench" / "out.log").read_text()
    # "... Batch (t): 0.194, 82.4713/s, 82.4713/s/gpu ..." : samples/s of each logged step
    return [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s", log)]


def mean_after(xs: list[float], skip: int) -> float:
    tail = xs[skip:] or xs
    return sum(tail) / len(tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qclip-vit-tiny,ViT-B-16")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the mean")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model in both trainers (pretrain.compile / --torchcompile); raise --skip "
                         "past the compiling steps")
    ap.add_argument("--data", default="", help="qclip dataset; default: a world pool generated here")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the device's dense peak (H100 SXM bf16: 989); > 0 adds model FLOPs utilisation columns")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="qclip-bench-"))
    data = Path(args.data) if args.data else tmp / "world" / "pool"
    if not args.data:
        n = args.steps * args.batch_size
        from qclip.config import load_config
        from qclip.data.world_shards import build_world

        # in this process: the data is not what is timed, and a `qclip world` process would import torch again
        build_world(load_config(None, [f"world.n_pool={n}", "world.n_curated=0", "world.n_dense=0", "world.n_dev=0",
                                       "world.n_val=0", f"world.shard_size={max(args.batch_size, n // 4)}",
                                       f"world.image_size={args.image_size}", "world.alt_text_relevance=1.0",
                                       "world.workers=1"]), tmp / "world", progress=False)
    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {args.device}, batch {args.batch_size}, {args.steps} steps (first {args.skip} left out), "
          f"{args.workers} workers, {args.precision}{', torch.compile' if args.compile else ''}")
    mfu_head = f"{'GFLOPs/img':>12}{'qclip MFU':>11}{'open_clip MFU':>15}" if args.peak_tflops else ""
    print(f"{'model':<18}{'qclip img/s':>14}{'open_clip img/s':>18}{'ratio':>8}{mfu_head}")
    for name in args.models.split(","):
        mdir = model_dir(name, args.image_size, tmp)
        t0 = time.time()
        ours = mean_after(run_qclip(data, mdir, tmp / f"q-{name}", args), args.skip)
        (tmp / f"o-{name}").mkdir()
        theirs = mean_after(run_open_clip(data, mdir, tmp / f"o-{name}", args), args.skip)
        mfu = ""
        if args.peak_tflops:  # model FLOPs (forward + backward, counted by torch) x images/s / peak
            flops = train_flops_per_sample(f"local-dir:{mdir}", args.image_size)[0]
            peak = args.peak_tflops * 1e12
            mfu = f"{flops / 1e9:>12.1f}{ours * flops / peak:>11.1%}{theirs * flops / peak:>15.1%}"
        print(f"{name:<18}{ours:>14.1f}{theirs:>18.1f}{ours / theirs:>8.2f}{mfu}   ({time.time() - t0:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()
