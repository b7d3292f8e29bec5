"""GPU-hours of a pretraining recipe: training FLOPs per sample counted by torch, times samples seen.

    python benchmarks/recipe_cost.py --config configs/pretrain_vit_b16_datacomp.yaml --gpus 256
    python benchmarks/recipe_cost.py --config configs/pretrain_vit_b16_datacomp.yaml --mfu 0.35 --peak-tflops 989

FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward + backward of the recipe's model (image and
text tower, one sample, the recipe's image size and the tokenizer's context length) on this CPU: model FLOPs,
not counting activation recomputation. Samples seen = steps x batch_size x accum_steps x GPUs. GPU-hours =
FLOPs / (peak x MFU): the peak is the accelerator's dense bf16 figure from its data sheet and the MFU an
assumption you pass (benchmarks/pretrain_throughput.py measures it on a GPU); both are printed with the result.

A study config (`study.dense` set, e.g. configs/study_datacomp_ade20k_nyu.yaml) costs every CLIP pretraining of
its methods and seeds, plus every transfer: per encoder transferred (each method, random init and each given
encoder), dataset, labelled fraction and seed, the recipe's steps x batch x FLOPs of the encoder + head at its
image size. Captioning the pool and evaluation are not counted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--gpus", type=int, default=256, help="ranks the recipe runs on (its per-rank batch times this)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from flops import train_flops_per_sample

    from qclip.config import load_config

    cfg = load_config(args.config)
    t = cfg.pretrain
    flops, size, ctx = train_flops_per_sample(t.model, t.image_size)
    global_batch = t.batch_size * t.accum_steps * args.gpus
    samples = t.steps * global_batch
    total = flops * samples
    hours = total / (args.peak_tflops * 1e12 * args.mfu) / 3600
    print(f"model {t.model} at {size} px, text context {ctx}: {flops / 1e9:.1f} GFLOPs per sample "
          f"(forward + backward, counted by torch)")
    print(f"global batch {global_batch:,} ({args.gpus} GPUs x {t.batch_size} x {t.accum_steps}), {t.steps:,} steps "
          f"= {samples / 1e9:.2f}B samples seen, {total:.3g} FLOPs")
    print(f"at {args.peak_tflops:g} TFLOP/s peak and {args.mfu:.0%} MFU (assumed): {hours:,.0f} GPU-hours "
          f"= {hours / args.gpus:,.1f} h on {args.gpus} GPUs")
    if cfg.study.dense:
        study_cost(cfg, total, args.peak_tflops * 1e12 * args.mfu)


def study_cost(cfg, pretrain_total: float, flops_per_second: float) -> None:
    """The whole study: each CLIP pretraining at the recipe, then every transfer (see the module docstring)."""
    from flops import transfer_flops_per_sample

    from qclip.config import STUDY_METHODS, dense_transfer, encoder_train

    st = cfg.study
    clip_methods = [m for m in st.methods if STUDY_METHODS[m].kind == "clip"]
    trained = [m for m in st.methods if STUDY_METHODS[m].kind != "random"]
    if len(trained) != len(clip_methods):
        print(f"  note: {', '.join(sorted(set(trained) - set(clip_methods)))} pretraining counted at the CLIP "
              "recipe's cost (an upper bound for their image tower alone)")
    pre = pretrain_total * len(trained) * st.seeds * len(st.encoders)
    print(f"study: {len(trained)} pretraining(s) x {len(st.encoders)} encoder(s) x {st.seeds} seed(s) = "
          f"{pre:.3g} FLOPs, {pre / flops_per_second / 3600:,.0f} GPU-hours")
    total = pre
    encoders_per_seed = len(st.methods) + len(st.given)
    for d in st.dense:
        t = dense_transfer(cfg, d)
        for enc in st.encoders:
            model = encoder_train(cfg, enc).pretrain.model
            per = transfer_flops_per_sample(model, t.task, t.mode, t.image_size, t.level_indices or t.levels,
                                            t.decoder_width, t.num_classes or 150, t.depth_bins,
                                            aux=t.task == "segmentation" and t.mode == "finetune"
                                            and t.aux_loss_weight > 0)
            runs = encoders_per_seed * len(t.data_fractions) * st.seeds
            cost = per * t.steps * t.batch_size * runs
            total += cost
            print(f"  transfer {d.name} ({t.task}, {t.mode}, {t.image_size} px, {model}): {per / 1e9:.1f} GFLOPs "
                  f"per sample x {t.steps:,} steps x batch {t.batch_size} x {runs} runs ({encoders_per_seed} "
                  f"encoders x {len(t.data_fractions)} fractions x {st.seeds} seed(s)) = {cost:.3g} FLOPs, "
                  f"{cost / flops_per_second / 3600:,.0f} GPU-hours")
    print(f"study total: {total:.3g} FLOPs = {total / flops_per_second / 3600:,.0f} GPU-hours at the peak and MFU "
          "above")


if __name__ == "__main__":
    main()
