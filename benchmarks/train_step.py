"""One CLIP training step of a preset on random inputs, under each execution setting, in one process.

    python benchmarks/train_step.py                                   # MCi and ViT presets, eager vs channels_last
    python benchmarks/train_step.py --models qclip-mci-tiny --settings eager channels_last compile
    python benchmarks/train_step.py --models qclip-mci-tiny --settings channels_last --image-sizes 64 48 --batch-size 32

What `pretrain.channels_last`, `pretrain.compile` and `pretrain.precision=bf16` do to the step itself, without
the loader: batch `--batch-size` of 64 px images, open_clip's ClipLoss, fused AdamW. Prints the median step time
over the steps after `--skip`, the first step (compilation lands there) and the ratio to eager. With several
`--image-sizes` (what `pretrain.image_size` below the world's does: low-resolution pretraining), each size's row
also gives its ratio to the first size's, same setting.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import open_clip
import torch
from qclip_cli import ROOT  # benchmarks/qclip_cli.py, beside this script

sys.path.insert(0, str(ROOT / "src"))
from qclip.models import create_clip  # noqa: E402
from qclip.optim import to_memory_format  # noqa: E402

SETTINGS = ("eager", "channels_last", "compile", "channels_last+compile", "bf16")


def step_times(model_name: str, setting: str, batch: int, steps: int, size: int = 64) -> list[float]:
    torch.manual_seed(0)
    model = create_clip(model_name, output_dict=True).model
    fmt = to_memory_format(model, "channels_last" in setting)  # what pretrain.channels_last does
    fwd = torch.compile(model) if "compile" in setting else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setting == "bf16" else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    texts = torch.randint(1, 400, (batch, model.context_length))
    model.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast:
            out = fwd(image=images, text=texts)
        loss = loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qclip-mci-tiny", "qclip-vit-tiny"])
    ap.add_argument("--settings", nargs="+", default=["eager", "channels_last"], choices=SETTINGS)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the median")
    ap.add_argument("--image-sizes", nargs="+", type=int, default=[64], help="input sides in px; the first is the anchor")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print(f"{'model':<16} {'setting':<22} {'px':>4} {'first step s':>12} {'median s':>9} {'vs eager':>9} "
          f"{'vs ' + str(args.image_sizes[0]) + ' px':>9}")
    for name in args.models:
        anchors: dict[str, float] = {}  # setting -> median at the first size
        for size in args.image_sizes:
            eager = None
            for setting in args.settings:
                t = step_times(name, setting, args.batch_size, args.steps, size)
                med = statistics.median(t[args.skip:])
                eager = med if setting == "eager" else eager
                anchor = anchors.setdefault(setting, med)
                ratio = f"{eager / med:.2f}x" if eager else "-"
                print(f"{name:<16} {setting:<22} {size:>4} {t[0]:>12.2f} {med:>9.3f} {ratio:>9} {anchor / med:>8.2f}x")


if __name__ == "__main__":
    main()
