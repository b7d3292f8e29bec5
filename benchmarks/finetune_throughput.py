"""Dense fine-tuning speed: `qclip transfer`'s training loop against a plain PyTorch loop of the same model,
batch and augmentation; the loader alone; sliding-window inference.

    python benchmarks/finetune_throughput.py                       # tiny ViT, 64-px crops, CPU
    python benchmarks/finetune_throughput.py --encoder random:ViT-B-16 --image-size 512 --batch-size 16 \
        --steps 30 --workers 8 --device cuda                       # the ADE20k recipe's shapes on a GPU

Data: ADE20k-layout images (random pixels, block masks) at 4/3 x the crop, written here. Both loops run
configs/transfer_ade20k_upernet.yaml (UperNet + auxiliary head, RandomResize + cat-max crop + photometric,
layer decay, poly schedule) at the sizes given; the plain loop is what one would write by hand around the same
modules (DataLoader, autocast, cross-entropy, AdamW, LambdaLR). Step times come from a hook on the head's
forward in both loops, averaged after `--skip` warm-up steps; each ratio is against the plain loop measured
in the same run. The loader line reads batches alone with the same workers: its images/s over the training
images/s is the loader's headroom (> 1: the loader is not the bottleneck).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_ade20k(root: Path, n_train: int, n_val: int, h: int, w: int) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("training", n_train), ("validation", n_val)):
        for d in ("images", "annotations"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / "images" / split / f"ADE_{split}_{i:08d}.jpg")
            blocks = rng.integers(1, 151, (h // 32 + 1, w // 32 + 1)).astype(np.uint8)
            mask = np.kron(blocks, np.ones((32, 32), np.uint8))[:h, :w]
            Image.fromarray(mask).save(root / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return root


class StepClock:
    """Wall-clock time between consecutive training forwards of a module (one per step)."""

    def __init__(self, module, device) -> None:
        self.stamps: list[float] = []
        self.device = device
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        import torch

        if module.training:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    def seconds_per_step(self, skip: int) -> float:
        d = np.diff(self.stamps)[skip:]
        return float(np.mean(d)) if len(d) else float("nan")


def build(cfg, num_classes: int, device):
    import torch

    from qclip.transfer.encoders import load_encoder
    from qclip.transfer.heads import DenseHead

    t = cfg.transfer
    torch.manual_seed(0)
    enc = load_encoder(ENCODER, t.image_size, t.level_indices or t.levels).to(device)
    head = DenseHead(enc.info.channels, enc.info.plain, t.task, t.mode, num_classes, t.decoder_width,
                     aux_level=2 if t.aux_loss_weight > 0 else -1).to(device)
    return enc, head


def qclip_loop(cfg, train, num_classes: int, device, skip: int) -> float:
    import torch

    from qclip.transfer import run as tr
    from qclip.transfer.heads import DenseHead

    clocks = []
    real_init = DenseHead.__init__

    def init(self, *a, **k):  # the hook on the head train_head builds
        real_init(self, *a, **k)
        clocks.append(StepClock(self, device))

    DenseHead.__init__ = init
    try:
        torch.manual_seed(0)
        enc = tr.load_encoder(ENCODER, cfg.transfer.image_size,
                              cfg.transfer.level_indices or cfg.transfer.levels).to(device)
        tr.train_head(enc, train, cfg.transfer, num_classes, 0, None, False, "bench")
    finally:
        DenseHead.__init__ = real_init
    return clocks[-1].seconds_per_step(skip)


def plain_loop(cfg, train, num_classes: int, device, skip: int) -> float:
    """The same model, batch, augmentation and update, written as one would by hand."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from qclip.optim import lr_lambda
    from qclip.transfer.dataset import collate

    t = cfg.transfer
    enc, head = build(cfg, num_classes, device)
    clock = StepClock(head, device)
    params = [{"params": head.parameters(), "lr": t.lr}, {"params": enc.parameters(), "lr": t.lr * t.encoder_lr_mult}]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.warmup_steps, t.steps, t.lr, 0.0, t.schedule))
    loader = DataLoader(train, batch_size=t.batch_size, shuffle=True, collate_fn=collate, num_workers=t.workers,
                        drop_last=True, prefetch_factor=4 if t.workers else None, persistent_workers=bool(t.workers))
    enc.train()
    head.train()
    step = 0
    while step < t.steps:
        for b in loader:
            x, y = b["image"].to(device), b["target"].to(device)
            flip = torch.rand(len(x), device=device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                main, aux = head(enc(x), tuple(x.shape[-2:]))
                loss = F.cross_entropy(main.float(), y, ignore_index=255) \
                    + t.aux_loss_weight * F.cross_entropy(aux.float(), y, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == t.steps:
                break
    return clock.seconds_per_step(skip)


def loader_images_per_s(cfg, train, batches: int) -> float:
    from torch.utils.data import DataLoader

    from qclip.transfer.dataset import collate

    t = cfg.transfer
    loader = DataLoader(train, batch_size=t.batch_size, shuffle=True, collate_fn=collate, num_workers=t.workers,
                        prefetch_factor=4 if t.workers else None)
    it, n = iter(loader), 0
    next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(batches):
        try:
            n += len(next(it)["key"])
        except StopIteration:
            it = iter(loader)
    return n / (time.perf_counter() - t0)


def slide_images_per_s(cfg, val, num_classes: int, device) -> float:
    import torch

    from qclip.transfer.inference import predict

    enc, head = build(cfg, num_classes, device)
    enc.eval()
    head.eval()

    def forward(x, size):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return head(enc(x), size)

    with torch.no_grad():
        item = val[0]
        predict(forward, item["image"][None], tuple(item["target"].shape), cfg.transfer, "segmentation", device)
        t0 = time.perf_counter()
        for i in range(len(val)):
            item = val[i]
            predict(forward, item["image"][None], tuple(item["target"].shape), cfg.transfer, "segmentation", device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(val) / (time.perf_counter() - t0)


ENCODER = "random:qclip-vit-tiny"


def main() -> None:
    global ENCODER
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default=ENCODER)
    ap.add_argument("--image-size", type=int, default=64, help="training crop and sliding window")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the mean")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--decoder-width", type=int, default=64, help="0: the recipe's (768)")
    ap.add_argument("--levels", default="", help="e.g. 0,1,2,3 for a 4-block tower; default: the recipe's")
    ap.add_argument("--val-images", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="transfer.compile in qclip's loop")
    args = ap.parse_args()
    ENCODER = args.encoder

    import torch

    from qclip.config import load_config
    from qclip.transfer.dataset import TransferDataset, open_splits

    tmp = Path(tempfile.mkdtemp(prefix="qclip-finetune-bench-"))
    S = args.image_size
    root = write_ade20k(tmp / "ade", max(args.batch_size * 2, 16), args.val_images, S, S * 4 // 3)
    levels = f"[{args.levels}]" if args.levels else ("[]" if "qclip-" in args.encoder else "[3,5,7,11]")
    over = [f"transfer.image_size={S}", f"transfer.batch_size={args.batch_size}", f"transfer.steps={args.steps}",
            f"transfer.workers={args.workers}", f"transfer.device={args.device}", f"transfer.resize_scale=[{S * 4},{S}]",
            f"transfer.eval_stride={S // 2}", f"transfer.level_indices={levels}", "transfer.warmup_steps=1",
            f"transfer.compile={str(args.compile).lower()}", "transfer.eval_batch_size=16"]
    if args.decoder_width:
        over.append(f"transfer.decoder_width={args.decoder_width}")
    cfg = load_config(ROOT / "configs" / "transfer_ade20k_upernet.yaml", over)
    t = cfg.transfer
    device = torch.device(args.device)
    _, train_ds, val_ds = open_splits(root, "ade20k", "segmentation")
    from qclip.transfer.encoders import load_encoder

    info = load_encoder(ENCODER, S, t.level_indices or t.levels).info
    train = TransferDataset.for_transfer(train_ds, list(range(len(train_ds))), t, info.mean, info.std, train=True)
    val = TransferDataset.for_transfer(val_ds, list(range(len(val_ds))), t, info.mean, info.std, train=False)

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, device "
          f"{args.device}{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}; encoder "
          f"{ENCODER}, crops {S}, batch {args.batch_size}, {args.steps} steps (first {args.skip} left out), "
          f"{args.workers} workers{', compiled' if args.compile else ''}")
    plain = plain_loop(cfg, train, 150, device, args.skip)
    ours = qclip_loop(cfg, train, 150, device, args.skip)
    loader = loader_images_per_s(cfg, train, max(4, args.steps // 2))
    slide = slide_images_per_s(cfg, val, 150, device)
    print(f"{'fine-tune step':<28}{'s/it':>10}{'it/s':>10}{'img/s':>10}{'vs plain':>10}")
    for name, s in (("plain PyTorch loop", plain), ("qclip train_head", ours)):
        print(f"{name:<28}{s:>10.4f}{1 / s:>10.2f}{args.batch_size / s:>10.1f}{s / plain:>10.3f}")
    print(f"loader alone: {loader:.1f} img/s = {loader / (args.batch_size / ours):.2f}x the training rate "
          f"(> 1: not the bottleneck)")
    print(f"sliding-window inference: {slide:.2f} img/s ({S}-px windows, stride {S // 2}, images {S}x{S * 4 // 3})")


if __name__ == "__main__":
    main()
