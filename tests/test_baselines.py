"""The non-CLIP baselines: MAE for ViTs, SimMIM for hierarchical towers, supervised on object labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qclip.config import load_config
from qclip.models import create_clip
from qclip.train.baselines import mae_encode, patchify, train_baseline


def test_patchify_matches_token_order():
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 8)  # 2 x 3 rows of patches
    assert p.shape == (2, 6, 8 * 8 * 3)
    r, c = 1, 2
    assert torch.equal(p[1, r * 3 + c], x[1, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].permute(1, 2, 0).reshape(-1))


def test_mae_encoder_sees_a_quarter_of_the_tokens():
    visual = create_clip("qclip-vit-tiny").model.visual.eval()
    x = torch.randn(2, 3, 64, 64)
    tokens, keep = mae_encode(visual, x, 0.75, torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 16, visual.transformer.width) and keep.shape == (2, 16)
    assert all(len(set(k.tolist())) == 16 for k in keep)  # distinct patches
    # keeping every token in order reproduces the ViT's own token output
    full, keep_all = mae_encode(visual, x, 0.0, torch.Generator().manual_seed(0))
    order = keep_all.argsort(1)
    full = full.gather(1, order[..., None].expand_as(full))
    visual.output_tokens = True
    _, ref = visual(x)
    assert torch.allclose(full, ref, atol=1e-5)


@pytest.mark.parametrize("model, objective", [("qclip-vit-tiny", "mae"), ("qclip-mci-tiny", "simmim")])
def test_mim_baseline_picks_its_objective_and_writes_a_model(world_dir, tmp_path, model, objective):
    cfg = load_config(None, [f"pretrain.model={model}", "pretrain.steps=3", "pretrain.batch_size=8", "pretrain.warmup_steps=1"])
    s = train_baseline(cfg, "mim", world_dir / "pool", tmp_path / "run", progress=False)
    assert s["objective"] == objective and np.isfinite(s["final_loss"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["objective"] == objective
    assert (tmp_path / "run" / "model" / "open_clip_config.json").is_file()
