"""Dense transfer: metrics with known answers, nested fractions, encoders from every spec form, heads, and
`qclip transfer` on the world and on ADE20k / VOC / NYUv2 layout fixtures made from world renders."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from qclip.cli import main
from qclip.data.shards import ShardReader
from qclip.transfer.encoders import EncoderError, load_encoder
from qclip.transfer.fractions import nested_subset, parse_fractions
from qclip.transfer.heads import DenseHead
from qclip.transfer.metrics import DepthMetric, SegmentationMetric


def test_segmentation_metric_known_answer_and_torchmetrics():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
    m = SegmentationMetric(4)
    m.update(pred, target)
    r = m.compute()
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2; class 3 absent (excluded)
    assert r["IoU_per_class"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2], abs=1e-5) and r["IoU_per_class"][3] is None
    assert r["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["aAcc"] == pytest.approx(4 / 6)  # ignored pixels are not counted
    from torchmetrics.classification import MulticlassJaccardIndex

    tm = MulticlassJaccardIndex(4, average=None, ignore_index=255)(pred.flatten(), target.flatten())
    assert torch.allclose(tm[:3].double(), torch.tensor(r["IoU_per_class"][:3]).double(), atol=1e-4)
    # dataset-level: a second batch changes the union, not an average of per-batch IoUs
    m.update(torch.tensor([[[3, 3]]]), torch.tensor([[[3, 0]]]))
    assert m.compute()["IoU_per_class"][3] == pytest.approx(0.5)


def test_object_miou_leaves_out_stuff_classes():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])
    pred = torch.tensor([[[0, 0, 1, 1], [2, 3, 3, 3]]])
    m = SegmentationMetric(4, class_names=["floor", "wall", "cube", "cone"], stuff_classes=["floor", "wall"])
    m.update(pred, target)
    r = m.compute()
    assert r["object_mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2) and r["class_names"][2] == "cube"
    plain = SegmentationMetric(4)
    plain.update(pred, target)
    assert "object_mIoU" not in plain.compute()
    # names that do not fit the class count are not reported
    mismatched = SegmentationMetric(5, class_names=["a", "b"])
    mismatched.update(pred, target)
    assert "class_names" not in mismatched.compute()


def test_probe_convergence_is_measured_over_the_last_fifth():
    from qclip.transfer.run import convergence

    assert convergence([1.0] * 50)["converged"] is True
    falling = [1.0 - i / 100 for i in range(100)]  # still falling 10% over the last fifth
    c = convergence(falling)
    assert c["converged"] is False and c["loss_drop_last_fifth_pct"] > 5


def test_depth_metric_known_answers_per_image_average():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])  # 0 = invalid
    pred = torch.tensor([[[2.0, 4.0], [8.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    m = DepthMetric(max_depth=10.0)
    m.update(pred, gt)
    r = m.compute()
    rmse0 = np.sqrt((1 + 4 + 16) / 3)
    assert r["images"] == 2
    assert r["RMSE"] == pytest.approx(rmse0 / 2)  # image 2 is perfect; metrics are averaged over images
    assert r["AbsRel"] == pytest.approx(0.5) and r["delta1"] == pytest.approx(0.5)


def test_nested_fractions():
    small, big = nested_subset(100, 0.1, seed=3), nested_subset(100, 1.0, seed=3)
    mid = nested_subset(100, 0.5, seed=3)
    assert len(small) == 10 and set(small) <= set(mid) <= set(big) and len(big) == 100
    assert small == nested_subset(100, 0.1, seed=3) and small != nested_subset(100, 0.1, seed=4)
    assert parse_fractions("1.0,0.1") == [0.1, 1.0]
    for bad in ("0", "1.5", "-0.1,1"):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            parse_fractions(bad)


@pytest.mark.parametrize("spec, strides, plain", [
    ("random:qclip-vit-tiny", [8, 8, 8, 8], True),
    ("random:qclip-mci-tiny", [4, 8, 16, 32], False),
    ("random:vit_tiny_patch16_224", [16, 16, 16, 16], True),
    ("random:fastvit_t8", [4, 8, 16, 32], False),
])
def test_encoder_levels_and_heads(spec, strides, plain):
    enc = load_encoder(spec, 64)
    assert enc.info.reductions == strides and enc.info.plain == plain
    x = torch.randn(2, 3, 64, 64)
    feats = enc(x)
    for task, mode in (("segmentation", "probe"), ("segmentation", "finetune"), ("depth", "finetune")):
        head = DenseHead(enc.info.channels, plain, task, mode, num_classes=6, width=32, depth_bins=16)
        out = head(feats, (64, 64))
        assert out.shape == ((2, 6, 64, 64) if task == "segmentation" else (2, 64, 64))
        if task == "depth":
            assert (out > 0).all() and (out <= 10).all()


def test_probe_head_is_bn_then_1x1_conv_on_stacked_levels():
    """The probe's (pixels, channels) matmul is DINOv2's BN -> 1x1 conv on the levels upsampled to the finest
    one; feeding it the cached stack gives the same output as feeding it the levels."""
    import torch.nn.functional as F

    from qclip.transfer.heads import LinearProbeHead

    torch.manual_seed(0)
    head = LinearProbeHead([8, 16], 5)
    torch.nn.init.normal_(head.bn.weight)
    feats = [torch.randn(3, 8, 8, 8), torch.randn(3, 16, 4, 4)]
    stacked = LinearProbeHead.stack(feats)
    assert len(stacked) == 1 and stacked[0].shape == (3, 24, 8, 8) and LinearProbeHead.stack(stacked) is stacked
    assert torch.equal(stacked[0][:, 8:], F.interpolate(feats[1], size=(8, 8), mode="bilinear", align_corners=False))
    for training in (True, False):
        head.train(training)
        tracked = int(head.bn.num_batches_tracked)
        ref = torch.nn.Sequential(torch.nn.BatchNorm2d(24), torch.nn.Conv2d(24, 5, 1)).train(training)
        ref[0].load_state_dict(head.bn.state_dict())
        ref[1].load_state_dict(head.conv.state_dict())
        want = ref(torch.cat([feats[0], stacked[0][:, 8:]], 1))
        assert torch.allclose(head(feats), want, atol=1e-5) and torch.allclose(head(stacked), want, atol=1e-5)
        # counts its batches as nn.BatchNorm2d does (ref ran one batch, the head two)
        assert int(ref[0].num_batches_tracked) == tracked + training
        assert int(head.bn.num_batches_tracked) == tracked + 2 * training


def test_log_depth_head_positive_bounded_and_fits_log_linear_depth():
    """depth_bins=0: one channel of log depth. On features that encode log depth linearly the probe, a convex
    problem under SILog, fits it almost exactly in a short schedule."""
    from qclip.transfer.losses import depth_loss

    torch.manual_seed(0)
    head = DenseHead([4], False, "depth", "probe", depth_bins=0, min_depth=0.5, max_depth=10.0)
    depth = torch.rand(16, 8, 8) * 7 + 2
    feats = [torch.stack([depth.log(), torch.randn_like(depth), torch.randn_like(depth), torch.ones_like(depth)], 1)]
    with torch.no_grad():
        head.decoder.conv.bias.fill_(5.0)  # starts far past max_depth: no clip while training, so it comes back
    out = head.eval()(feats, (8, 8))
    assert out.shape == (16, 8, 8) and (out >= 0.5 - 1e-6).all() and (out <= 10 + 1e-5).all()
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(300):
        loss = depth_loss(head(feats, (8, 8)), depth)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    assert ((head(feats, (8, 8)) - depth).abs() / depth).mean() < 0.05


def test_cached_validation_features_give_the_same_metrics(world_dir):
    from qclip.config import load_config
    from qclip.data.dense import open_dense
    from qclip.transfer.dataset import TransferDataset
    from qclip.transfer.run import _feature_batches, evaluate_head

    cfg = load_config(None, ["transfer.eval_batch_size=5"]).transfer
    enc = load_encoder("random:qclip-mci-tiny", 64)
    ds = open_dense(world_dir, "qclip", "segmentation", "val")
    val = TransferDataset(ds, list(range(len(ds))), 64, enc.info.mean, enc.info.std, train=False)
    head = DenseHead(enc.info.channels, False, "segmentation", "probe", num_classes=6)
    torch.nn.init.normal_(head.decoder.conv.weight)
    plain, ex_plain = evaluate_head(enc, head, val, cfg, 6, n_examples=8)
    batches = _feature_batches(enc, val, 5, 0, torch.device("cpu"))
    assert all("image" not in b for _, b in batches)  # the cache holds features and targets, not images
    cached, ex_cached = evaluate_head(enc, head, val, cfg, 6, n_examples=8, cached=batches)
    assert cached["mIoU"] == pytest.approx(plain["mIoU"], abs=1e-6) and cached["aAcc"] == pytest.approx(plain["aAcc"])
    assert len(ex_cached) == len(ex_plain) == 8 == len(val)  # spans two batches of 5
    assert all(np.array_equal(a["image"], b["image"]) and np.array_equal(a["target"], b["target"])
               for a, b in zip(ex_plain, ex_cached))


def test_encoder_from_qclip_folder_and_timm_export(tmp_path):
    from qclip.models import create_clip
    from qclip.models.checkpoint import save_model_dir
    from qclip.models.export import export_image_tower

    torch.manual_seed(0)
    b = create_clip("qclip-mci-tiny")
    save_model_dir(b.model, b.model_cfg, b.preprocess_cfg, tmp_path / "run" / "model")
    x = torch.randn(1, 3, 64, 64)
    b.model.eval()
    want = b.model.visual.trunk.forward_intermediates(x, indices=4, intermediates_only=True)
    for spec in (str(tmp_path / "run"), str(tmp_path / "run" / "model")):
        got = load_encoder(spec, 64).eval()(x)
        assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
    export_image_tower(tmp_path / "run" / "model", tmp_path / "timm")
    got = load_encoder(f"timm:local-dir:{tmp_path / 'timm'}", 64).eval()(x)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def test_unknown_encoder_fails_clearly():
    with pytest.raises(EncoderError, match="random:ARCH"):
        load_encoder("no_such_thing", 64)
    with pytest.raises(EncoderError, match="unknown model .vit_tiny_patch16_2240"):
        load_encoder("random:vit_tiny_patch16_2240", 64)


def _world_to_layouts(world, root):
    """Write the world's dense/val splits as ADE20k, VOC and NYUv2 folders (real renders, exact labels)."""
    voc_ids = {"train": [], "val": []}
    for split, sub, nyu in (("dense", "training", "train"), ("val", "validation", "test")):
        for i, s in enumerate(ShardReader(world / split)):
            img = s.pil()
            (root / "ade/images" / sub).mkdir(parents=True, exist_ok=True)
            (root / "ade/annotations" / sub).mkdir(parents=True, exist_ok=True)
            img.save(root / "ade/images" / sub / f"{s.key}.jpg")
            Image.fromarray((s.seg + 1).astype(np.uint8)).save(root / "ade/annotations" / sub / f"{s.key}.png")
            for d in ("JPEGImages", "SegmentationClass"):
                (root / "voc" / d).mkdir(parents=True, exist_ok=True)
            img.save(root / "voc/JPEGImages" / f"{s.key}.jpg")
            Image.fromarray(s.seg.astype(np.uint8), mode="L").convert("P").save(root / "voc/SegmentationClass" / f"{s.key}.png")
            voc_ids["train" if split == "dense" else "val"].append(s.key)
            (root / "nyu" / nyu / "scene").mkdir(parents=True, exist_ok=True)
            img.save(root / "nyu" / nyu / "scene" / f"rgb_{i:05d}.png")
            Image.fromarray((s.depth * 1000).astype(np.uint16)).save(root / "nyu" / nyu / "scene" / f"sync_depth_{i:05d}.png")
    (root / "voc/ImageSets/Segmentation").mkdir(parents=True)
    for k, ids in voc_ids.items():
        (root / "voc/ImageSets/Segmentation" / f"{k}.txt").write_text("\n".join(ids) + "\n")


def test_transfer_cli_world_and_layouts(world_dir, tmp_path, capsys):
    _world_to_layouts(world_dir, tmp_path)
    fast = ["transfer.steps=4", "transfer.batch_size=4", "transfer.decoder_width=16", "transfer.depth_bins=16"]
    cases = [(world_dir, "segmentation", "probe", 6), (world_dir, "depth", "finetune", 0),
             (tmp_path / "ade", "segmentation", "finetune", 150), (tmp_path / "voc", "segmentation", "probe", 21),
             (tmp_path / "nyu", "depth", "probe", 0)]
    for data, task, mode, classes in cases:
        out = tmp_path / "runs" / f"{data.name}-{task}-{mode}"
        bins = ["transfer.depth_bins=0"] if (task, mode) == ("depth", "probe") else []  # log-depth head
        rc = main(["transfer", "--encoder", "random:qclip-mci-tiny", "--data", str(data), "--task", task, "--mode",
                   mode, "--data-fractions", "0.25,1.0", "--out", str(out), "--quiet", *fast, *bins])
        assert rc == 0, (data, task, mode)
        assert f"-> {task} ({mode})" in capsys.readouterr().out
        s = json.loads((out / "metrics.json").read_text())
        assert s["num_classes"] == classes and [r["data_fraction"] for r in s["results"]] == [0.25, 1.0]
        assert s["results"][0]["train_samples"] == 4 and s["results"][1]["train_samples"] == 16
        key = "mIoU" if task == "segmentation" else "RMSE"
        assert all(np.isfinite(r["metrics"][key]) for r in s["results"])
        assert (out / f"{task}-{mode}-f1" / "predictions.png").stat().st_size > 3000  # drawn at the largest only
        assert not (out / f"{task}-{mode}-f0.25" / "predictions.png").exists()
        from qclip.transfer.visualize import load_examples  # the grid's arrays, for the report's comparison
        ex = load_examples(out / f"{task}-{mode}-f0.25" / "predictions.npz")
        assert ex and ex[0]["pred"].shape == ex[0]["target"].shape
        assert (out / "config.yaml").is_file() and (out / "run.json").is_file()


def test_transfer_probe_learns(world_dir, tmp_path):
    """A probe on frozen random-init features must beat predicting the majority class (floor) everywhere."""
    from qclip.config import load_config
    from qclip.transfer.run import run_transfer

    cfg = load_config(None, ["transfer.steps=60", "transfer.batch_size=8", "transfer.lr=0.01",
                             "transfer.data_fractions=[1.0]"])
    s = run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "probe", progress=False)
    val = [x.seg for x in ShardReader(world_dir / "val")]
    floor = np.mean([(v == 0).mean() for v in val])  # IoU of "all floor" with the floor class
    n_present = len({int(c) for v in val for c in np.unique(v)})
    assert s["results"][0]["metrics"]["mIoU"] > 1.5 * floor / n_present


def test_probe_grid_chooses_on_the_selection_split_and_reports_that_head(world_dir, tmp_path):
    """With transfer.probe_weight_decays each fraction trains one head per weight decay, keeps the best on
    select_split (dev) and reports that head on val: the same metrics as a run with that weight decay alone."""
    from qclip.config import ConfigError, load_config, transfer_result_keys
    from qclip.transfer.run import run_transfer

    base = ["transfer.steps=5", "transfer.batch_size=8", "transfer.task=depth", "transfer.data_fractions=[1.0]",
            "transfer.depth_bins=0"]
    s = run_transfer(load_config(None, base + ["transfer.probe_weight_decays=[50.0, 0.0]"]),
                     "random:qclip-mci-tiny", world_dir, tmp_path / "grid", progress=False)
    sel = s["results"][0]["probe_selection"]
    assert sel["split"] == "dev" and [g["weight_decay"] for g in sel["grid"]] == [50.0, 0.0]
    assert sel["weight_decay"] == min(sel["grid"], key=lambda g: g["RMSE"])["weight_decay"]
    alone = run_transfer(load_config(None, base + [f"transfer.weight_decay={sel['weight_decay']}"]),
                         "random:qclip-mci-tiny", world_dir, tmp_path / "alone", progress=False)
    assert alone["results"][0]["metrics"] == s["results"][0]["metrics"]
    assert "probe_selection" not in alone["results"][0]
    with pytest.raises(ValueError, match="reported on"):  # choosing on the reported split is refused
        run_transfer(load_config(None, base + ["transfer.probe_weight_decays=[0.0]", "transfer.select_split=val"]),
                     "random:qclip-mci-tiny", world_dir, tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="probe"):
        load_config(None, ["transfer.mode=finetune", "transfer.probe_weight_decays=[0.1]"])
    # without a grid the stage key is the one hashed before the grid existed: cached studies stay cached
    t = load_config(None, base).transfer
    assert "select_split" not in transfer_result_keys(t) and "probe_weight_decays" not in transfer_result_keys(t)


def test_feature_memo_shares_features_between_tasks_with_the_same_results(world_dir, tmp_path, monkeypatch):
    """The study passes one FeatureMemo to an encoder's segmentation and depth runs: the second must encode no
    image and give exactly the metrics it gives alone; another encoder must not read the first one's features."""
    from qclip.config import load_config
    from qclip.transfer import run as run_mod

    calls = []
    real_forward = run_mod.DenseEncoder.forward
    monkeypatch.setattr(run_mod.DenseEncoder, "forward", lambda self, x: calls.append(len(x)) or real_forward(self, x))
    cfgs = {task: load_config(None, ["transfer.steps=5", "transfer.batch_size=8", f"transfer.task={task}",
                                     "transfer.data_fractions=[0.5, 1.0]", "transfer.eval_batch_size=16"])
            for task in ("segmentation", "depth")}

    def metrics(s: dict) -> list:
        return [r["metrics"] for r in s["results"]]

    alone = {task: metrics(run_mod.run_transfer(c, "random:qclip-mci-tiny", world_dir, tmp_path / f"a-{task}",
                                                progress=False)) for task, c in cfgs.items()}
    n_alone = sum(calls) // 2  # images one run encodes
    assert n_alone > 0
    memo = run_mod.FeatureMemo()
    calls.clear()
    shared = {task: metrics(run_mod.run_transfer(c, "random:qclip-mci-tiny", world_dir, tmp_path / f"m-{task}",
                                                 progress=False, memo=memo)) for task, c in cfgs.items()}
    assert shared == alone
    assert sum(calls) == n_alone + 1  # the depth run encoded no image (1: building an encoder probes one image)
    calls.clear()
    other = run_mod.run_transfer(cfgs["depth"], "random:qclip-vit-tiny", world_dir, tmp_path / "other",
                                 progress=False, memo=memo)
    assert sum(calls) == n_alone and other["encoder_info"]["channels"] != [32, 64, 128, 256]


def test_transfer_config_errors(world_dir, tmp_path, capsys):
    assert main(["transfer", "--encoder", "random:qclip-vit-tiny", "--data", str(world_dir), "--data-fractions",
                 "0,1", "--out", str(tmp_path / "x")]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["transfer", "--encoder", "random:nope_net", "--data", str(world_dir), "--out",
                 str(tmp_path / "y")]) == 2
    assert "unknown" in capsys.readouterr().err and not (tmp_path / "y" / "metrics.json").exists()
    assert main(["transfer", "--encoder", "random:qclip-vit-tiny", "--data", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_finetune_resumes_from_its_checkpoint(world_dir, tmp_path, monkeypatch, capsys):
    """A fine-tuning run that dies after its step-2 checkpoint, re-run, ends where an uninterrupted run ends; a
    changed setting does not resume the old checkpoints."""
    import qclip.transfer.run as tr
    from qclip.config import load_config

    cfg = load_config(None, ["transfer.task=depth", "transfer.mode=finetune", "transfer.steps=4",
                             "transfer.checkpoint_every=2", "transfer.batch_size=4", "transfer.decoder_width=8",
                             "transfer.depth_bins=8", "transfer.data_fractions=[1.0]", "transfer.device=cpu"])
    ref = tr.run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "ref", progress=False)
    assert "s/step measured; the 1 steps left need about" in capsys.readouterr().out  # the cost, told up front

    calls, real_loss = [], tr._loss

    def dies_at_step_3(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(*a)

    monkeypatch.setattr(tr, "_loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        tr.run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "run", progress=False)
    monkeypatch.setattr(tr, "_loss", real_loss)
    ckpt = tmp_path / "run" / "depth-finetune-f1" / "checkpoints"
    assert json.loads((ckpt / "latest.json").read_text())["step"] == 2
    resumed = tr.run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "run", progress=False)
    a, b = ref["results"][0], resumed["results"][0]
    assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-5)
    assert a["metrics"]["RMSE"] == pytest.approx(b["metrics"]["RMSE"], rel=1e-5)

    cfg.transfer.lr = cfg.transfer.lr / 2  # another setting: the old checkpoints are dropped, not resumed
    again = tr.run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "run", progress=False)
    fresh = tr.run_transfer(cfg, "random:qclip-vit-tiny", world_dir, tmp_path / "fresh", progress=False)
    assert again["results"][0]["final_train_loss"] == pytest.approx(fresh["results"][0]["final_train_loss"], rel=1e-5)
    assert again["results"][0]["final_train_loss"] != pytest.approx(a["final_train_loss"], rel=1e-5)


def test_transfer_summary_ends_with_a_per_class_table():
    from qclip.transfer.run import format_summary

    s = {"encoder": "e", "task": "segmentation", "mode": "probe", "seconds": 3, "results": [
        {"data_fraction": 0.1, "metrics": {"mIoU": 0.4}},
        {"data_fraction": 1.0, "metrics": {"mIoU": 0.5, "IoU_per_class": [0.9, None, 0.3], "object_mIoU": 0.3,
                                           "class_names": ["floor", "wall", "cube"]}}]}
    lines = format_summary(s).splitlines()
    assert lines[0].startswith("transfer e -> segmentation (probe): 0.1: mIoU 0.4000, 1: mIoU 0.5000")
    assert "100% of the labels" in lines[1]
    assert [ln.split() for ln in lines[3:6]] == [["floor", "0.9000"], ["wall", "-"], ["cube", "0.3000"]]
    assert lines[6].split()[:2] == ["objects", "0.3000"]


def test_a_diverged_loss_stops_the_run_at_once_and_names_the_fix(world_dir, tmp_path, monkeypatch):
    """Fine-tuning at a probe's learning rate can diverge (RESULTS: depth at transfer.lr=0.01); the run stops at
    the first non-finite loss with the setting to lower, instead of training on NaN to the end."""
    import qclip.transfer.run as tr
    from qclip.config import load_config

    cfg = load_config(None, ["transfer.steps=20", "transfer.batch_size=4", "transfer.data_fractions=[1.0]"])
    calls, real_loss = [], tr._loss

    def nan_at_step_3(*a):
        calls.append(1)
        loss = real_loss(*a)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(tr, "_loss", nan_at_step_3)
    with pytest.raises(FloatingPointError, match="diverged at step 3.*lower transfer.lr"):
        tr.run_transfer(cfg, "random:qclip-mci-tiny", world_dir, tmp_path / "probe", progress=False)
    assert len(calls) == 3
