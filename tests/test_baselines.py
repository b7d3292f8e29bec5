"""The non-CLIP baselines: MAE for ViTs, SimMIM for hierarchical towers, supervised on object labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qclip.config import load_config
from qclip.models import create_clip
from qclip.train.baselines import mae_encode, patchify, random_patch_mask, train_baseline


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


@pytest.mark.parametrize("patch", [8, 16])
def test_simmim_masks_squares_of_the_configured_side(patch):
    m = random_patch_mask(64, 64, patch, torch.Generator().manual_seed(0))
    assert m.shape == (64, 1, 64, 64)
    blocks = m.unfold(2, patch, patch).unfold(3, patch, patch)  # every block all masked or all visible
    assert torch.equal(blocks.amin((-1, -2)), blocks.amax((-1, -2)))
    assert 0.55 < m.mean().item() < 0.65  # SimMIM's ratio, 0.6
    with pytest.raises(ValueError, match="does not divide"):
        random_patch_mask(1, 64, 12, torch.Generator())


def test_mim_mask_patch_keys_the_baseline_not_clip():
    from qclip.config import result_keys

    default, coarse, spark = (load_config(None, [o]).pretrain for o in (
        "pretrain.mim_mask_patch=8", "pretrain.mim_mask_patch=16", "pretrain.mim_hierarchical=spark"))
    for other in (coarse, spark):
        assert result_keys(default) == result_keys(other)  # a CLIP run keeps its stage cache
        assert result_keys(default, text_tower=False) == result_keys(other, text_tower=False)  # supervised too
        assert result_keys(default, text_tower=False, masked=True) != result_keys(other, text_tower=False, masked=True)
    # masked image modeling cached before the keys existed still matches
    assert not {"mim_mask_patch", "mim_hierarchical"} & set(result_keys(default, text_tower=False, masked=True))


def test_a_mim_mask_patch_that_does_not_divide_the_image_fails_before_any_stage():
    from qclip.config import ConfigError
    from qclip.study import check_image_sizes

    demo = ["study.encoders=[qclip-mci-tiny]", "study.methods=[random,mim]"]
    check_image_sizes(load_config(None, demo + ["pretrain.mim_mask_patch=16"]))
    with pytest.raises(ConfigError, match="mim_mask_patch = 12 does not divide qclip-mci-tiny's image size 64"):
        check_image_sizes(load_config(None, demo + ["pretrain.mim_mask_patch=12"]))
    # the ViT's masked image modeling is MAE on its own patches: the key does not apply
    check_image_sizes(load_config(None, ["study.encoders=[qclip-vit-tiny]", "study.methods=[mim]",
                                         "pretrain.mim_mask_patch=12"]))


@pytest.mark.parametrize("model, hierarchical, objective", [("qclip-vit-tiny", "spark", "mae"),
                                                               ("qclip-mci-tiny", "simmim", "simmim"),
                                                               ("qclip-mci-tiny", "spark", "spark")])
def test_mim_baseline_picks_its_objective_and_writes_a_model(world_dir, tmp_path, model, hierarchical, objective):
    cfg = load_config(None, [f"pretrain.model={model}", "pretrain.steps=3", "pretrain.batch_size=8",
                             "pretrain.warmup_steps=1", f"pretrain.mim_hierarchical={hierarchical}"])
    s = train_baseline(cfg, "mim", world_dir / "pool", tmp_path / "run", progress=False)
    assert s["objective"] == objective and np.isfinite(s["final_loss"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["objective"] == objective
    assert (tmp_path / "run" / "model" / "open_clip_config.json").is_file()


def test_spark_keeps_masked_cells_empty_in_the_fine_stages_and_leaves_a_dense_tower():
    from qclip.models.dense_encoder import DenseEncoder
    from qclip.train.baselines import SparKDecoder, cell_visibility, sparse_stage_hooks

    torch.manual_seed(0)
    visual = create_clip("qclip-mci-tiny").model.visual.eval()
    enc = DenseEncoder(visual, "random:qclip-mci-tiny", "qclip-mci-tiny", 64, levels=4)
    assert enc.info.reductions == [4, 8, 16, 32]
    x = torch.randn(2, 3, 64, 64)
    dense = [f.clone() for f in enc(x)]
    mask = random_patch_mask(2, 64, 8, torch.Generator().manual_seed(1))
    visible = cell_visibility(mask, enc.info.reductions, 8)
    assert visible[2] is None and visible[3] is None  # 16- and 32-px cells mix masked and visible pixels
    state = {"visible": visible}
    hooks = sparse_stage_hooks(visual, enc.info.reductions, 8, state)
    assert len(hooks) == 3  # the stem (stride 4), stage 0 (4), stage 1 (8)
    with torch.no_grad():
        feats = enc(x * (1 - mask))
    for f, v in zip(feats[:2], visible[:2]):
        assert (f * (1 - v)).abs().max() == 0 and (f * v).abs().max() > 0
    pred = SparKDecoder(enc.info.channels, enc.info.reductions)(feats, visible)
    assert pred.shape == x.shape
    for h in hooks:
        h.remove()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(enc(x), dense))  # no hook left behind
    with pytest.raises(ValueError, match="mim_hierarchical=simmim"):
        sparse_stage_hooks(create_clip("qclip-vit-tiny").model.visual, [4, 8, 16, 32], 8, state)
    trunk = getattr(visual, "trunk", visual)
    trunk.stem = torch.nn.Sequential(trunk.stem, torch.nn.AvgPool2d(2))  # a stem at stride 8, not level 0's 4
    sparse_stage_hooks(visual, enc.info.reductions, 8, state)
    with pytest.raises(ValueError, match="stem outputs .* stem at the first stage's stride"), torch.no_grad():
        enc(x * (1 - mask))


def test_box_targets_label_the_cells_a_box_covers():
    from qclip.train.baselines import box_targets

    scene = {"objects": [
        {"shape": "cube", "visible": True, "bbox": [0, 0, 64, 64]},  # covers everything, drawn first (largest)
        {"shape": "cone", "visible": True, "bbox": [16, 16, 33, 41]},  # rows with centres 24, 40; column 24
        {"shape": "sphere", "visible": False, "bbox": [40, 40, 64, 64]},  # hidden: no label
    ]}
    y = box_targets(scene, 64)
    assert y.shape == (4, 4) and y.dtype == np.int64
    cone, cube = 1 + 3, 1 + 0
    assert y[1, 1] == cone and y[2, 1] == cone  # centres (24, 24) and (24, 40) lie in the cone's box
    assert y[1, 2] == cube and y[3, 3] == cube  # centre x 40 is outside [16, 33); the hidden sphere labels nothing
    assert (box_targets({"objects": []}, 64) == 0).all()


def test_boxes_baseline_trains_on_the_curated_boxes(world_dir, tmp_path):
    cfg = load_config(None, ["pretrain.model=qclip-mci-tiny", "pretrain.steps=3", "pretrain.batch_size=8",
                             "pretrain.warmup_steps=1", "pretrain.require_raw_caption=true"])
    s = train_baseline(cfg, "boxes", world_dir / "curated", tmp_path / "run", progress=False)
    assert s["objective"] == "boxes" and np.isfinite(s["final_loss"]) and s["first_loss"] > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "none (box targets)" in json.dumps(run)


def _interrupt_after(monkeypatch, calls: int) -> None:
    """The baseline's optimiser steps raise after `calls` of them: a run killed mid-way (as a SIGKILL would
    leave it: checkpoints on disk, nothing else)."""
    from qclip.train import baselines

    real, n = baselines.optimizer_step, [0]

    def step(*args, **kwargs):
        n[0] += 1
        if n[0] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines, "optimizer_step", step)


@pytest.mark.parametrize("model, method", [("qclip-mci-tiny", "mim"), ("qclip-vit-tiny", "mim"),
                                           ("qclip-mci-tiny", "supervised")])
def test_a_killed_baseline_resumes_to_the_uninterrupted_result(world_dir, tmp_path, monkeypatch, model, method):
    from safetensors.torch import load_file

    from qclip.train import baselines

    # SparK on the MCi and MAE on the ViT draw their masks from the batch generator: its state is saved too
    over = [f"pretrain.model={model}", "pretrain.steps=7", "pretrain.batch_size=8", "pretrain.warmup_steps=1",
            "pretrain.checkpoint_every=3", "pretrain.mim_hierarchical=spark"]
    cfg = load_config(None, over)
    train_baseline(cfg, method, world_dir / "pool", tmp_path / "ref", progress=False)
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)  # killed in step 6, after the checkpoint at step 3
        with pytest.raises(KeyboardInterrupt):
            train_baseline(cfg, method, world_dir / "pool", tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())["step"] == 3
    steps_run = []
    real = baselines.optimizer_step
    monkeypatch.setattr(baselines, "optimizer_step", lambda *a, **k: (steps_run.append(1), real(*a, **k))[1])
    train_baseline(cfg, method, world_dir / "pool", tmp_path / "run", progress=False)
    assert len(steps_run) == 4  # steps 4-7 only
    a, b = (load_file(tmp_path / r / "model" / "open_clip_model.safetensors") for r in ("ref", "run"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "run" / "metrics.jsonl").read_text()
    assert not (tmp_path / "run" / "checkpoints").exists()  # finished: the model folder is what stays


def test_a_baseline_never_resumes_a_checkpoint_of_other_settings(world_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    base = ["pretrain.model=qclip-mci-tiny", "pretrain.steps=5", "pretrain.batch_size=8", "pretrain.warmup_steps=1",
            "pretrain.checkpoint_every=2"]
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            train_baseline(load_config(None, base), "supervised", world_dir / "pool", tmp_path / "run",
                           progress=False)
    other = load_config(None, base + ["pretrain.lr=0.002"])
    train_baseline(other, "supervised", world_dir / "pool", tmp_path / "run", progress=False)
    train_baseline(other, "supervised", world_dir / "pool", tmp_path / "fresh", progress=False)
    a, b = (load_file(tmp_path / r / "model" / "open_clip_model.safetensors") for r in ("fresh", "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)
