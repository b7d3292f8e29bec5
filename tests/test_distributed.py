"""Multi-process correctness on CPU with gloo: gather-with-grad, disjoint shards, torchrun end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from qclip.models import create_clip
from qclip.train.losses import build_loss

B = 8


def _batch(bundle):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 64, 64, generator=g)
    texts = bundle.tokenizer([f"a {c} cube number {i}" for i, c in enumerate("rgbycmkw")])
    return images, texts


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank_main(rank, world, init_file, out_file, local_loss):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bundle = create_clip("qclip-vit-tiny", output_dict=True)
    images, texts = _batch(bundle)
    half = slice(rank * B // world, (rank + 1) * B // world)
    model = DistributedDataParallel(bundle.model)
    o = model(image=images[half], text=texts[half])
    loss = build_loss("clip", rank, world, local_loss, True)(o["image_features"], o["text_features"], o["logit_scale"])
    loss.backward()
    all_losses = [None] * world
    dist.all_gather_object(all_losses, loss.item())
    if rank == 0:
        torch.save({"losses": all_losses, "grads": _grads(bundle.model)}, out_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_ranks_half_batch_equal_one_process_full_batch(tmp_path, local_loss):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt"), local_loss), nprocs=2)
    ddp = torch.load(tmp_path / "out.pt", weights_only=True)

    torch.manual_seed(0)
    bundle = create_clip("qclip-vit-tiny", output_dict=True)
    images, texts = _batch(bundle)
    o = bundle.model(image=images, text=texts)
    loss = build_loss("clip", 0, 1, False, True)(o["image_features"], o["text_features"], o["logit_scale"])
    loss.backward()
    full = _grads(bundle.model)

    if local_loss:  # each rank holds the loss of its own rows; their mean is the full-batch loss
        assert sum(ddp["losses"]) / 2 == pytest.approx(loss.item(), abs=1e-5)
    else:  # every rank computes the full-batch loss
        assert all(x == pytest.approx(loss.item(), abs=1e-5) for x in ddp["losses"])
    assert ddp["grads"].keys() == full.keys()
    for name, g in full.items():
        assert torch.allclose(ddp["grads"][name], g, atol=1e-6, rtol=1e-4), name


def test_torchrun_two_ranks_read_disjoint_shards(world_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "qclip", "pretrain", "--data", str(world_dir / "pool"), "--out", str(out), "--quiet",
           "pretrain.batch_size=8", "pretrain.steps=3", "pretrain.workers=0", "pretrain.caption_policy=raw",
           "pretrain.warmup_steps=1", "pretrain.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    r0, r1 = run["shards_by_rank"]
    assert run["world_size"] == 2 and r0 and r1 and not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(p.name for p in (world_dir / "pool" / "shards").glob("*.tar"))
    assert (out / "model" / "open_clip_model.safetensors").is_file()
