"""The study on your own data: a pool ingested from a CSV + image folder, a dense dataset in ADE20k layout and one
in NYU layout (written from world scenes at another resolution than the world's), a baseline given as an encoder;
bad inputs fail with a message before anything trains; train and evaluation splits are never silently shared."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import qclip_main
import yaml
from PIL import Image

from qclip.config import ConfigError, load_config
from qclip.data.shards import ShardReader

ROOT = Path(__file__).resolve().parents[1]
SIDE = (72, 96)  # (height, width): not the world's 64 x 64, not square


def _resize(img: Image.Image, nearest: bool = False) -> Image.Image:
    return img.resize(SIDE[::-1], Image.NEAREST if nearest else Image.BILINEAR)


def write_pool_csv(world: Path, root: Path) -> tuple[Path, Path]:
    """The world's pool as a user's folder of JPEGs + a CSV of alt-text (empty alt-text rows left out, as a
    scrape keeps only captioned images)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for s in ShardReader(world / "pool"):
        raw = (s.captions.get("raw") or [""])[0]
        if not raw:
            continue
        _resize(s.pil()).save(root / "images" / f"{s.key}.jpg", quality=92)
        rows.append({"file": f"{s.key}.jpg", "alt": raw})
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "alt"])
        w.writeheader()
        w.writerows(rows)
    return root / "images", root / "captions.csv"


def write_ade20k(world: Path, root: Path) -> Path:
    """World scenes in ADE20k's layout: 0 = other (ignored), classes from 1 (reduce_zero_label)."""
    for split, sub in (("dense", "training"), ("val", "validation")):
        for d in ("images", "annotations"):
            (root / d / sub).mkdir(parents=True)
        for s in ShardReader(world / split):
            _resize(s.pil()).save(root / "images" / sub / f"ADE_{sub}_{s.key}.jpg", quality=92)
            mask = Image.fromarray((s.seg.astype(np.uint8) + 1))
            _resize(mask, nearest=True).save(root / "annotations" / sub / f"ADE_{sub}_{s.key}.png")
    return root


def write_nyu(world: Path, root: Path) -> Path:
    """World scenes in the BTS/NYU layout: train/<scene>/rgb_N.jpg + sync_depth_N.png (uint16 millimetres)."""
    for split, sub in (("dense", "train"), ("val", "test")):
        scene = root / sub / "room_0001"
        scene.mkdir(parents=True)
        for i, s in enumerate(ShardReader(world / split)):
            _resize(s.pil()).save(scene / f"rgb_{i:05d}.jpg", quality=92)
            mm = np.clip(s.depth * 1000, 0, 65535).astype(np.uint16)
            Image.fromarray(mm).resize(SIDE[::-1], Image.NEAREST).save(scene / f"sync_depth_{i:05d}.png")
    return root


TINY_OWN = ["pretrain.steps=2", "pretrain.batch_size=8", "pretrain.warmup_steps=1", "pretrain.workers=0",
            "pretrain.image_size=64", "study.caption_beams=1", "study.caption_batch_size=16"]


def own_study(tmp: Path, pool: Path, captioner: str, ade: Path, nyu: Path, **study) -> Path:
    """A study config naming the user's data, as README's "Your own data" shows."""
    recipe_overrides = {"image_size": 32, "steps": 2, "batch_size": 4, "warmup_steps": 1, "decoder_width": 8,
                        "eval_batch_size": 4, "workers": 0, "device": "cpu", "data_fractions": [0.5, 1.0],
                        "checkpoint_every": 0, "resize_scale": [], "eval_stride": 0,
                        "level_indices": []}
    cfg = {"seed": 0,
           "study": {"encoders": ["qclip-vit-tiny"], "methods": ["clip-raw", "clip-synthetic", "mim"],
                     "pool": str(pool), "captioner": captioner,
                     "dense": [{"name": "ade", "path": str(ade), "task": "segmentation", "layout": "ade20k",
                                "recipe": str(ROOT / "configs" / "transfer_ade20k_upernet.yaml"),
                                "transfer": {**recipe_overrides, "mode": "probe", "scale_range": [1.0, 1.0]}},
                               {"name": "nyu", "path": str(nyu), "task": "depth", "layout": "nyu",
                                "recipe": str(ROOT / "configs" / "transfer_nyuv2_depth.yaml"),
                                "transfer": {**recipe_overrides, "mode": "probe", "depth_bins": 8,
                                             "eigen_crop": False}}],
                     "given": {"vit-given": "random:qclip-vit-tiny"}, **study}}
    path = tmp / "my_study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def user_data(world_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user")
    images, table = write_pool_csv(world_dir, tmp / "scrape")
    res = subprocess.run([sys.executable, "-m", "qclip", "ingest", "table", "--images", str(images), "--table",
                          str(table), "--path-column", "file", "--caption-column", "alt", "--out", str(tmp / "pool"),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return {"tmp": tmp, "pool": tmp / "pool", "ade": write_ade20k(world_dir, tmp / "ADEChallengeData2016"),
            "nyu": write_nyu(world_dir, tmp / "nyu")}


@pytest.mark.slow
def test_the_study_runs_on_a_users_pool_and_dense_datasets(user_data, coca_dir, tmp_path):
    u = user_data
    config = own_study(tmp_path, u["pool"], f"local-dir:{coca_dir}", u["ade"], u["nyu"])
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "qclip", "run", "--config", str(config), "--out", str(out), "--quiet", *TINY_OWN]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "the world is not generated" in res.stdout and not (out / "world").exists()
    assert "dense ade: segmentation, ade20k layout, train 'train' 16, val 'val' 8" in res.stdout
    assert "dense nyu: depth, nyu layout, train 'train' 16, val 'test' 8" in res.stdout
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    # no retrieval / zero-shot on a user's pool (they read the world's labels): dense rows only
    assert {(r["task"], r["dataset"]) for r in rows} == {("segmentation", "ade"), ("depth", "nyu")}
    assert {r["method"] for r in rows} == {"clip-raw", "clip-synthetic", "mim", "vit-given"}
    assert {r["data_fraction"] for r in rows} == {0.5, 1.0}
    given = [r for r in rows if r["method"] == "vit-given"]
    assert given and all(r["given"] == "random:qclip-vit-tiny" and r["encoder"] == "qclip-vit-tiny" for r in given)
    assert all(len(r["metrics"]["IoU_per_class"]) == 150 for r in rows if r["task"] == "segmentation")
    # each transfer names its splits and sizes; the recipe's own settings arrive (ADE20k's 150 classes)
    m = json.loads((out / "transfer" / "seed0" / "qclip-vit-tiny-clip-raw-segmentation" / "metrics.json").read_text())
    assert m["splits"] == {"train": {"split": "train", "samples": 16}, "val": {"split": "val", "samples": 8}}
    assert m["layout"] == "ade20k" and m["num_classes"] == 150
    d = json.loads((out / "transfer" / "seed0" / "given-vit-given-depth" / "metrics.json").read_text())
    assert d["splits"]["val"] == {"split": "test", "samples": 8} and d["layout"] == "nyu"
    # the pool was recaptioned by the given captioner; CLIP read the user's pool, MIM too
    assert (out / "pool_captioned" / "manifest.json").is_file()
    mim = json.loads((out / "pretrain" / "seed0" / "qclip-vit-tiny-mim" / "run.json").read_text())
    assert mim["data"] == str(u["pool"])
    html = (out / "report.html").read_text()
    assert "Given as encoders" in html and "vit-given = random:qclip-vit-tiny" in html and "Trained here" in html
    # a re-run reuses every stage: the user's data keys the cache as the world does
    code, _, err = qclip_main(*cmd[3:])  # in this process: no second ~15 s of imports
    assert code == 0, err[-3000:]
    assert json.loads((out / "run.json").read_text())["stages_run"] == []


def _error(config: Path, *overrides: str) -> str:
    from qclip.study import preflight

    with pytest.raises(ConfigError) as e:
        preflight(load_config(config, list(overrides)), log=lambda _: None)
    return str(e.value)


@pytest.mark.slow
def test_bad_inputs_fail_before_training_with_the_input_named(user_data, world_dir, coca_dir, tmp_path):
    u, tmp = user_data, tmp_path
    good = own_study(tmp, u["pool"], f"local-dir:{coca_dir}", u["ade"], u["nyu"])
    from qclip.study import preflight

    preflight(load_config(good), log=lambda _: None)  # the good inputs pass

    # a pool whose samples have no captions at all
    from qclip.data.shards import ShardWriter

    empty = tmp / "nocaps"
    with ShardWriter(empty, shard_size=16) as w:
        for s in ShardReader(world_dir / "dense"):
            s.meta["captions"] = {"raw": [], "synthetic": {}}
            w.write(s)
        w.close()
    assert "has raw captions" in _error(own_study(tmp, empty, f"local-dir:{coca_dir}", u["ade"], u["nyu"]))
    assert "not a qclip dataset" in _error(own_study(tmp, tmp / "nowhere", f"local-dir:{coca_dir}", u["ade"],
                                                     u["nyu"]))

    # an ADE20k folder without its validation split
    no_val = tmp / "ade_noval"
    (no_val / "images").mkdir(parents=True)
    (no_val / "annotations").mkdir()
    for d in ("images", "annotations"):
        (no_val / d / "training").symlink_to(u["ade"] / d / "training")
    msg = _error(own_study(tmp, u["pool"], f"local-dir:{coca_dir}", no_val, u["nyu"]))
    assert "study.dense 'ade'" in msg and "validation" in msg and "missing" in msg

    # class ids beyond the declared classes: every mask skipped, counted and named
    bad_cfg = own_study(tmp, u["pool"], f"local-dir:{coca_dir}", u["ade"], u["nyu"])
    tree = yaml.safe_load(bad_cfg.read_text())
    tree["study"]["dense"][0]["num_classes"] = 3  # the world's masks hold ids 0..5
    bad_cfg.write_text(yaml.safe_dump(tree))
    msg = _error(bad_cfg)
    assert "study.dense 'ade'" in msg and "class id out of range" in msg

    # a depth map of another size than its image
    nyu_bad = tmp / "nyu_bad"
    for sub in ("train", "test"):
        src = u["nyu"] / sub / "room_0001"
        dst = nyu_bad / sub / "room_0001"
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name.startswith("sync_depth_"):
                Image.open(f).resize((40, 30), Image.NEAREST).save(dst / f.name)
            else:
                (dst / f.name).symlink_to(f)
    msg = _error(own_study(tmp, u["pool"], f"local-dir:{coca_dir}", u["ade"], nyu_bad))
    assert "study.dense 'nyu'" in msg and "size mismatch" in msg

    # a hub captioner that cannot be loaded offline
    msg = _error(own_study(tmp, u["pool"], "hf:qclip-test/no-such-captioner", u["ade"], u["nyu"]))
    assert "study.captioner 'hf:qclip-test/no-such-captioner'" in msg and "cannot be loaded here" in msg


def test_a_users_study_config_is_checked_as_a_whole(user_data, coca_dir, tmp_path):
    u = user_data
    cfg = own_study(tmp_path, u["pool"], f"local-dir:{coca_dir}", u["ade"], u["nyu"])
    with pytest.raises(ConfigError, match="supervised .*object labels.* exist only on the embedded world"):
        load_config(cfg, ["study.methods=[clip-raw,supervised]"])
    with pytest.raises(ConfigError, match="study.dense must name"):
        load_config(cfg, ["study.dense=[]"])
    with pytest.raises(ConfigError, match="needs a captioner"):
        load_config(cfg, ["study.captioner="])
    with pytest.raises(ConfigError, match="one dataset per task"):
        load_config(cfg, ["study.dense=[{name: a, path: x}, {name: b, path: y}]"])
    with pytest.raises(ConfigError, match="is the name of a method trained here"):
        load_config(cfg, ["study.given={mim: timm:vit_base_patch16_224.mae}"])
    with pytest.raises(ConfigError, match=r"unknown config key .study.dense\[ade\].transfer.steeps. \(did you mean"):
        load_config(cfg, ["study.dense=[{name: ade, path: x, transfer: {steeps: 2}}]"])


def test_transfer_refuses_train_and_evaluation_splits_that_share_images(world_dir, tmp_path):
    """`qclip transfer --data WORLD/dense`: one dataset holds no split folders, so train and val would both read
    it; refused with the folder and the fix named, unless transfer.allow_shared_splits says so."""
    from qclip.data.dense import DenseDataError
    from qclip.transfer.run import format_summary, run_transfer

    small = ["transfer.steps=1", "transfer.batch_size=4", "transfer.decoder_width=8", "transfer.data_fractions=[1.0]",
             "transfer.eval_batch_size=8"]
    with pytest.raises(DenseDataError, match="share 16 images.*allow_shared_splits"):
        run_transfer(load_config(None, small), "random:qclip-vit-tiny", world_dir / "dense", tmp_path / "a",
                     progress=False)
    s = run_transfer(load_config(None, small + ["transfer.allow_shared_splits=true"]), "random:qclip-vit-tiny",
                     world_dir / "dense", tmp_path / "b", progress=False)
    assert s["splits"]["train"]["samples"] == s["splits"]["val"]["samples"] == 16
    s = run_transfer(load_config(None, small), "random:qclip-vit-tiny", world_dir, tmp_path / "c", progress=False)
    assert s["splits"] == {"train": {"split": "dense", "samples": 16}, "val": {"split": "val", "samples": 8}}
    assert "(probe) [train 'dense' 16, val 'val' 8]: " in format_summary(s)


def test_the_world_study_keeps_its_stage_keys_and_rows(tmp_path, monkeypatch):
    """Without study.pool / dense / given the study is the world study it was: every carried stage of the committed
    headline (benchmarks/carry_headline) has the key the code computes today, and the rows built from those
    stages equal the committed benchmarks/headline/results.json. (Nothing trains: the data stages answer with
    stand-ins, the carried ones with their records.)"""
    import qclip.report.build
    from qclip.study import StageCache, run_study

    carry = ROOT / "benchmarks" / "carry_headline" / "stages"
    records = {p.stem: json.loads(p.read_text()) for p in carry.glob("*.json")}
    asked: dict[str, str] = {}

    class Carried(StageCache):
        def run(self, name, key, out_dir, fn, label="", every_rank=False):
            asked[name] = key
            if name in records:
                return records[name]["result"]
            return {"quality": {}, "steps": 0, "caption_loss": 0.0, "n": 0}  # world, captioner, recaption

    monkeypatch.setattr("qclip.study.StageCache", Carried)
    monkeypatch.setattr(qclip.report.build, "build_report", lambda *a, **k: None)
    monkeypatch.setattr("qclip.data.world_shards.summary_line", lambda *a, **k: "")
    (tmp_path / "world_preview.png").write_bytes(b"")  # the world is not rendered
    (tmp_path / ".qclip").write_text("written by qclip run")  # the study's own folder
    results = run_study(load_config(ROOT / "configs" / "headline.yaml"), tmp_path, progress=False, log=lambda _: None)
    assert records and {n: asked.get(n) for n in records} == {n: r["key"] for n, r in records.items()}
    committed = json.loads((ROOT / "benchmarks" / "headline" / "results.json").read_text())["rows"]
    assert results["rows"] == committed


def test_a_vit_position_embedding_follows_the_transfer_size():
    """A ViT pretrained at one size transferred at another: the class token kept, the grid interpolated as
    open_clip's resize_pos_embed; at its own size the tower is untouched."""
    import torch
    import torch.nn.functional as F

    from qclip.models import create_clip
    from qclip.transfer.encoders import fit_position_embedding

    visual = create_clip("qclip-vit-tiny").model.visual  # 64 px, 8 x 8 patches of 8
    before = visual.positional_embedding.detach().clone()
    fit_position_embedding(visual, 64)
    assert torch.equal(visual.positional_embedding, before)
    fit_position_embedding(visual, 32)
    after = visual.positional_embedding.detach()
    assert after.shape == (1 + 4 * 4, before.shape[1]) and visual.grid_size == (4, 4)
    assert torch.equal(after[0], before[0])
    grid = before[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(after[1:], want.permute(0, 2, 3, 1).reshape(16, -1))
    assert visual(torch.zeros(1, 3, 32, 32)).shape[0] == 1

