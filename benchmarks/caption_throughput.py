"""Recaptioning speed: batched generation vs one image at a time, same in-repo captioner, same images.

    python benchmarks/caption_throughput.py                          # trains a small captioner first (~1 min)
    python benchmarks/caption_throughput.py --captioner runs/demo/captioner/model --data runs/demo/world/val

Uses the captioner `qclip caption run` uses (`create_captioner`, open_clip's `CoCa.generate`) on the first
`--images` images of the data, greedy (the demo's `caption_beams: 1`) and beam search. Prints images/s for
batches of `--batch-size` and for batches of 1, the ratio, and how many captions the two agree on (greedy
decoding should give the same text either way; beam search may differ in ties).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from qclip_cli import ROOT, qclip  # benchmarks/qclip_cli.py, beside this script


def timed_captions(captioner, images, batch_size: int, sampling) -> tuple[float, list[str]]:
    out: list[str] = []
    t = time.perf_counter()
    for i in range(0, len(images), batch_size):
        out += [c[0] for c in captioner.caption(images[i:i + batch_size], 1, sampling)]
    return len(images) / (time.perf_counter() - t), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captioner", default="", help="a qclip captioner folder; default: train one here")
    ap.add_argument("--data", default="", help="images to caption (qclip dataset); default: a generated val split")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--beams", default="1,3", help="beam widths to measure (1 = greedy)")
    ap.add_argument("--train-steps", type=int, default=100)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from PIL import Image

    from qclip.captions.captioners import Sampling, create_captioner
    from qclip.data.shards import ShardReader

    tmp = Path(tempfile.mkdtemp(prefix="qclip-bench-"))
    if not args.captioner or not args.data:
        qclip("world", "--out", str(tmp / "world"), "--n", "0", "--quiet", "world.n_curated=1000", "world.n_dense=0",
              f"world.n_val={args.images}")
    data = Path(args.data) if args.data else tmp / "world" / "val"
    model = Path(args.captioner) if args.captioner else tmp / "captioner" / "model"
    if not args.captioner:
        qclip("caption", "train", "--data", str(tmp / "world" / "curated"), "--out", str(tmp / "captioner"), "--quiet",
              f"captioner.steps={args.train_steps}")
    captioner = create_captioner(f"local-dir:{model}")
    images = [Image.open(io.BytesIO(s.image)).convert("RGB") for _, s in zip(range(args.images), ShardReader(data))]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"captioner {model}, {len(images)} images")
    print(f"{'decoding':<12}{f'batch {args.batch_size} img/s':>18}{'batch 1 img/s':>15}{'ratio':>8}{'same text':>11}"
          f"{'words/caption':>15}")
    for beams in (int(b) for b in args.beams.split(",")):
        sampling = Sampling(method="beam", num_beams=beams)
        timed_captions(captioner, images[:2], 2, sampling)  # warm-up: first-call allocations
        batched, a = timed_captions(captioner, images, args.batch_size, sampling)
        single, b = timed_captions(captioner, images, 1, sampling)
        same = sum(x == y for x, y in zip(a, b))
        words = sum(len(x.split()) for x in a) / len(a)
        name = "greedy" if beams == 1 else f"beam {beams}"
        print(f"{name:<12}{batched:>18.1f}{single:>15.1f}{batched / single:>8.1f}{f'{same}/{len(a)}':>11}"
              f"{words:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
