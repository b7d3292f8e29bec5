#!/usr/bin/env bash
# What a CUDA machine does with qclip's heavy loops, in under 8 minutes:
#   - UperNet ViT-B/16 fine-tuning at the ADE20k recipe's shapes (batch 16, 512 crops, bf16), qclip's loop
#     against a plain PyTorch loop, eager and with transfer.compile; the loader's headroom; sliding-window
#     inference images/s (benchmarks/finetune_throughput.py);
#   - CLIP ViT-B/16 pretraining images/s and MFU, qclip against open_clip_train on the same batch
#     (benchmarks/pretrain_throughput.py).
# Without a CUDA device it runs the same scripts at tiny sizes on the CPU, to the end (tests do so); those
# numbers are not GPU numbers. Record a GPU's output in benchmarks/RESULTS.md with the machine and date.
#
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
date -u +"%Y-%m-%d %H:%M UTC"
git rev-parse --short HEAD 2>/dev/null || true
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # dense bf16 peak of the card, for MFU (H100 / H200 SXM: 989 TFLOPs)
  PEAK=$("$PY" -c "import torch; n = torch.cuda.get_device_name(); print(989 if ('H100' in n or 'H200' in n) else 312 if 'A100' in n else 0)")
  "$PY" benchmarks/finetune_throughput.py --encoder random:ViT-B-16 --image-size 512 --batch-size 16 --steps 40 \
      --skip 10 --workers 8 --decoder-width 0 --val-images 8 --device cuda
  "$PY" benchmarks/finetune_throughput.py --encoder random:ViT-B-16 --image-size 512 --batch-size 16 --steps 60 \
      --skip 30 --workers 8 --decoder-width 0 --val-images 4 --device cuda --compile
  "$PY" benchmarks/pretrain_throughput.py --models ViT-B-16 --image-size 224 --batch-size 256 --steps 24 --skip 8 \
      --workers 8 --device cuda --precision bf16 --peak-tflops "$PEAK"
else
  echo "no CUDA device: tiny sizes on the CPU (the scripts run to the end; these are not GPU numbers)"
  "$PY" benchmarks/finetune_throughput.py --image-size 32 --batch-size 4 --steps 4 --skip 1 --workers 0 \
      --decoder-width 16 --val-images 1
  "$PY" benchmarks/pretrain_throughput.py --models qclip-vit-tiny --image-size 32 --batch-size 8 --steps 3 --skip 1 \
      --workers 0
fi
