"""Is the shard loader the bottleneck of pretraining? Loader samples/s vs the training step's images/s.

    python benchmarks/dataloader_throughput.py                      # demo presets, demo batch, a generated pool
    python benchmarks/dataloader_throughput.py --data runs/demo/pool_captioned --policy synthetic:tiny
    python benchmarks/dataloader_throughput.py --cache-mb 512   # also the second epoch with pretrain.cache_mb

Loader: qclip's `ClipShardDataset` + `make_loader` exactly as `qclip pretrain` builds them (shard read, image
decode, the model's training transform, caption policy, tokenisation, collate) at 1 and 2 worker processes,
with nothing else running. Consumption: the training step alone (forward, CLIP loss, backward, AdamW) of each
preset on a batch held in memory, at the threads torch uses by default. Ratio = loader / consumption: above 1,
the loader keeps up (on a machine where the two share cores, as they do here, the headroom is what matters).
With --cache-mb: the same loader with decoded images and tokens kept per worker (`pretrain.cache_mb`), timed over
its second epoch (the first fills the caches), beside the uncached loader over the same second epoch.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from qclip_cli import ROOT, qclip  # benchmarks/qclip_cli.py, beside this script


def loader_rate(ds, batch_size: int, steps: int, workers: int, skip: int = 2) -> float:
    from qclip.train.shard_dataset import make_loader, steps_per_epoch

    loader = make_loader(ds, batch_size, steps_per_epoch(len(ds), batch_size, 1), steps, 0, 0, 0, workers)
    t = None
    n = 0
    for i, batch in enumerate(loader):
        if i == skip:  # worker start-up and the first prefetch are not the steady state
            t = time.perf_counter()
        elif i > skip:
            n += len(batch["images"])
    return n / (time.perf_counter() - t)


def train_rate(bundle, batch: dict, steps: int, skip: int = 2) -> float:
    import torch
    from open_clip.loss import ClipLoss

    model, loss_fn = bundle.model.train(), ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, texts = batch["images"], batch["texts"][:, 0]
    for i in range(steps + skip):
        if i == skip:
            t = time.perf_counter()
        image_features, text_features, logit_scale = model(images, texts)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(images) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qclip-vit-tiny,qclip-mci-tiny", help="the demo study's encoders")
    ap.add_argument("--batch-size", type=int, default=64, help="the demo's pretrain.batch_size")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--policy", default="raw")
    ap.add_argument("--data", default="", help="qclip dataset; default: a world pool generated here")
    ap.add_argument("--cache-mb", type=float, default=0.0, help="also time the second epoch with this cache")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from qclip.data.policy import CaptionPolicy
    from qclip.models import create_clip
    from qclip.train.shard_dataset import ClipShardDataset, make_loader, steps_per_epoch

    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="qclip-bench-")) / "world"
    if not args.data:
        n = (args.steps + 4) * args.batch_size
        qclip("world", "--out", str(data), "--n", str(n), "--quiet", "world.n_curated=0", "world.n_dense=0",
              "world.n_val=0", "world.shard_size=500", "world.alt_text_relevance=1.0")
        data = data / "pool"
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"batch {args.batch_size}, {args.steps} steps, data {data}")
    print(f"{'model':<18}{'train img/s':>13}{'loader 1w':>11}{'loader 2w':>11}{'ratio 1w':>10}{'ratio 2w':>10}")
    for name in args.models.split(","):
        bundle = create_clip(name)
        ds = ClipShardDataset(data, CaptionPolicy.parse(args.policy), bundle.preprocess_train, bundle.tokenizer, 0)
        rates = {w: loader_rate(ds, args.batch_size, args.steps, w) for w in (1, 2)}
        batch = next(iter(make_loader(ds, args.batch_size, len(ds) // args.batch_size, 1, 0, 0, 0, 0)))
        train = train_rate(bundle, batch, max(5, args.steps // 2))
        print(f"{name:<18}{train:>13.1f}{rates[1]:>11.1f}{rates[2]:>11.1f}{rates[1] / train:>10.2f}"
              f"{rates[2] / train:>10.2f}", flush=True)
        if args.cache_mb:
            spe = steps_per_epoch(len(ds), args.batch_size, 1)
            for label, mb in (("uncached", 0.0), (f"cache {args.cache_mb:g} MB", args.cache_mb)):
                d = ClipShardDataset(data, CaptionPolicy.parse(args.policy), bundle.preprocess_train,
                                     bundle.tokenizer, 0, cache_mb=mb)
                r = {w: loader_rate(d, args.batch_size, 2 * spe, w, skip=spe + 2) for w in (1, 2)}
                print(f"{'  epoch 2, ' + label:<31}{r[1]:>11.1f}{r[2]:>11.1f}{r[1] / train:>10.2f}"
                      f"{r[2] / train:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
