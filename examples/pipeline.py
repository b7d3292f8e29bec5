"""The whole qclip pipeline from Python, one call per stage (what `qclip run` does, without the study's cache,
seeds and report). Each stage reads the folder the previous one wrote:

    world (or your ingested data) -> captioner -> recaptioned pool -> CLIP on raw and on synthetic captions
    -> transfer of each image encoder to segmentation -> retrieval / zero-shot eval

    python examples/pipeline.py --out runs/api                 # minutes on a laptop CPU
    python examples/pipeline.py --out runs/api --tiny          # seconds: the settings tests/test_examples.py runs
"""
from __future__ import annotations

import argparse
from pathlib import Path

from qclip.captions.captioners import Sampling, create_captioner
from qclip.captions.quality import dataset_quality, format_quality
from qclip.captions.recaption import recaption
from qclip.captions.train import train_captioner
from qclip.config import load_config
from qclip.data.world_shards import build_world
from qclip.evaluate.retrieval import retrieval_metrics
from qclip.models import create_clip
from qclip.train.pretrain import pretrain
from qclip.transfer.run import format_summary, run_transfer

TINY = ["world.n_pool=64", "world.n_curated=32", "world.n_dense=16", "world.n_dev=8", "world.n_val=16",
        "world.shard_size=32", "world.workers=1", "captioner.steps=3", "captioner.batch_size=8",
        "captioner.warmup_steps=1", "captioner.workers=0", "pretrain.steps=3", "pretrain.batch_size=8",
        "pretrain.warmup_steps=1", "pretrain.workers=0", "transfer.steps=3", "transfer.batch_size=4",
        "transfer.warmup_steps=1", "transfer.data_fractions=[0.5,1.0]", "transfer.workers=0"]


def main(out: Path, overrides: list[str]) -> dict:
    cfg = load_config("configs/demo.yaml", ["pretrain.model=qclip-mci-tiny", *overrides])

    # 1. data: the embedded world (for your own image-text pairs: qclip.data.importers, or `qclip ingest`)
    build_world(cfg, out / "world")

    # 2. captions: train the in-repo captioner on the curated split, then recaption the pool with it
    captioner = train_captioner(cfg, out / "world" / "curated", out / "captioner")
    tiny = create_captioner(f"local-dir:{captioner['model_dir']}", captioner_id="tiny")
    recaption(out / "world" / "pool", out / "pool_captioned", tiny, n=1, sampling=Sampling(num_beams=1), seed=cfg.seed)
    print(format_quality(dataset_quality(out / "pool_captioned")))

    # 3. pretraining: the same images, raw alt-text vs synthetic captions
    results = {}
    for policy in ("raw", "synthetic:tiny"):
        cfg.pretrain.caption_policy, cfg.pretrain.require_raw_caption = policy, True
        name = policy.split(":")[0]
        run = pretrain(cfg, out / "pool_captioned", out / f"clip-{name}")

        # 4. transfer: a linear probe of the frozen image encoder on the world's masks, at two label fractions
        cfg.transfer.task = "segmentation"
        seg = run_transfer(cfg, run["model_dir"], out / "world", out / f"seg-{name}")
        print(format_summary(seg))

        # 5. evaluation: image <-> text retrieval on the val split's reference captions
        ret = retrieval_metrics(create_clip(f"local-dir:{run['model_dir']}"), out / "world" / "val")
        results[name] = {"mIoU": seg["results"][-1]["metrics"]["mIoU"], "R@1": ret["image_to_text_R@1"]}
    print(results)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/api"))
    ap.add_argument("--tiny", action="store_true", help="seconds-long settings (what the test runs)")
    args = ap.parse_args()
    main(args.out, TINY if args.tiny else [])
