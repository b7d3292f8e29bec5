"""What each piece of mmsegmentation's ADE20k protocol does to a segmentation fine-tune on the embedded world:
the full protocol (configs/transfer_ade20k_upernet.yaml scaled to the world), then each piece switched off alone,
then all of them off (qclip's plain loop: square resize, cosine schedule, one lr, whole-image evaluation).

    make demo   # an encoder pretrained on the world: runs/demo/pretrain/seed0/qclip-mci-tiny-clip-synthetic/model
    python benchmarks/dense_protocol_ablation.py --encoder runs/demo/pretrain/seed0/qclip-mci-tiny-clip-synthetic/model

The world is rendered at `--world-size` px (default 192) and fine-tuned on `--crop` px crops (default 128, the
recipe's 512 of 2048 x 512 scaled: resize_scale [4 x crop, crop]); evaluation on the world's val split, its own
images (never the training ones). Every run: same encoder, data, steps and seed. Prints one table (mIoU and its
change against the full protocol, per seed and the mean) and writes OUT/ablation.json. Re-run with more
`--seeds` on the same `--out`: finished runs are read back, not trained again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# each piece, as the override that switches it off
PIECES = {
    "layer-wise lr decay": ["transfer.layer_decay=1.0"],
    "poly schedule": ["transfer.schedule=cosine"],
    "RandomResize + crop": ["transfer.scale_range=[1.0,1.0]"],
    "cat_max_ratio": ["transfer.cat_max_ratio=1.0"],
    "photometric distortion": ["transfer.photometric=false"],
    "auxiliary FCN head": ["transfer.aux_loss_weight=0.0"],
    "sliding-window inference": ["transfer.eval_mode=whole"],
}


def variants() -> list[tuple[str, list[str]]]:
    out = [("full protocol", [])]
    out += [(f"- {name}", over) for name, over in PIECES.items()]
    out.append(("all pieces off (plain loop)", [o for over in PIECES.values() for o in over]))
    out.append(("full + multi-scale + flip test", ["transfer.eval_scales=[0.5,0.75,1.0,1.25,1.5,1.75]",
                                                   "transfer.eval_flip=true"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True, help="a model folder or any `qclip transfer --encoder` spec")
    ap.add_argument("--world", default="", help="a world folder; default: rendered here at --world-size")
    ap.add_argument("--world-size", type=int, default=192)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--n-dense", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch

    from qclip.config import load_config
    from qclip.data.world_shards import build_world
    from qclip.transfer.run import run_transfer

    out = Path(args.out or tempfile.mkdtemp(prefix="qclip-ablation-"))
    world = Path(args.world) if args.world else out / "world"
    if not args.world and not (world / "val").exists():
        wcfg = load_config(None, [f"world.image_size={args.world_size}", "world.n_pool=0", "world.n_curated=0",
                                  f"world.n_dense={args.n_dense}", "world.n_dev=0", f"world.n_val={args.n_val}"])
        build_world(wcfg, world, progress=False)
    c = args.crop
    base = [f"transfer.image_size={c}", f"transfer.resize_scale=[{4 * c},{c}]", f"transfer.steps={args.steps}",
            f"transfer.batch_size={args.batch_size}", f"transfer.warmup_steps={max(1, args.steps // 10)}",
            "transfer.data_fractions=[1.0]", "transfer.decoder_width=64", "transfer.eval_stride=0",
            "transfer.level_indices=[]", "transfer.num_classes=0", "transfer.layout=qclip", "transfer.lr=0.0003",
            "transfer.workers=0", "transfer.eval_batch_size=16", "transfer.checkpoint_every=0"]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}; encoder "
          f"{args.encoder}; world {args.world_size} px ({world}), crops {c}, {args.steps} steps x batch "
          f"{args.batch_size}, seeds {args.seeds}", flush=True)
    rows = []
    for seed in range(args.seeds):
        for name, over in variants():
            cfg = load_config(ROOT / "configs" / "transfer_ade20k_upernet.yaml", [f"seed={seed}", *base, *over])
            t0 = time.time()
            run_dir = out / f"seed{seed}" / name.strip("- ").replace(" ", "_")
            done = run_dir / "metrics.json"  # a finished run of an earlier call with fewer seeds: reused
            s = (json.loads(done.read_text()) if done.is_file()
                 else run_transfer(cfg, args.encoder, world, run_dir, progress=False))
            r = s["results"][0]
            rows.append({"variant": name, "seed": seed, "mIoU": r["metrics"]["mIoU"],
                         "final_train_loss": r["final_train_loss"], "seconds": round(time.time() - t0, 1)})
            print(f"  seed {seed} {name:<34} mIoU {r['metrics']['mIoU']:.4f} ({time.time() - t0:.0f}s)", flush=True)
    full = {r["seed"]: r["mIoU"] for r in rows if r["variant"] == "full protocol"}
    print(f"\n| variant | mIoU (mean of {args.seeds} seed(s)) | change vs full protocol | per seed |")
    print("| --- | ---: | ---: | --- |")
    for name, _ in variants():
        vals = [r for r in rows if r["variant"] == name]
        mean = sum(r["mIoU"] for r in vals) / len(vals)
        delta = sum(r["mIoU"] - full[r["seed"]] for r in vals) / len(vals)
        per = ", ".join(f"{r['mIoU']:.4f}" for r in vals)
        print(f"| {name} | {mean:.4f} | {delta * 100:+.2f} pt | {per} |")
    (out / "ablation.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nwritten: {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
