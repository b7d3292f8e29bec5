"""The real-scale recipes in configs/: each runs a few steps here, on generated fixtures, with its sizes
overridden; everything else (model, policy, head, layout, augmentation, loss) is the recipe's own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qclip.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# the study configs: tested as studies (test_cli.py) and as the demo plus their keys (test_config.py)
STUDY_CONFIGS = ("demo.yaml", "full.yaml", "headline.yaml", "vit.yaml")
RECIPES = ("pretrain_vit_b16_datacomp.yaml", "transfer_ade20k_upernet.yaml", "transfer_nyuv2_depth.yaml",
           "study_datacomp_ade20k_nyu.yaml")
SMALL_TRANSFER = ["transfer.image_size=32", "transfer.steps=2", "transfer.batch_size=2", "transfer.warmup_steps=1",
                  "transfer.decoder_width=16", "transfer.eval_batch_size=2", "transfer.workers=1",
                  "transfer.device=cpu", "transfer.resize_scale=[]", "transfer.eval_stride=0", "transfer.level_indices=[]"]


def test_every_recipe_has_a_test():
    found = {p.name for p in (ROOT / "configs").glob("*.yaml")} - set(STUDY_CONFIGS)
    assert found == set(RECIPES)


def test_full_study_is_the_demo_with_every_encoder_and_method():
    """configs/full.yaml: the demo's world, captioner, budget and probes, plus the ViT and every method of the
    comparison; the confound's arms and the reference-caption bound are commands of their own (README)
    (the study configs run end to end in tests/test_cli.py)."""
    from dataclasses import asdict

    from qclip.config import STUDY_METHODS

    demo, full = load_config(ROOT / "configs" / "demo.yaml"), load_config(ROOT / "configs" / "full.yaml")
    assert set(full.study.encoders) == {"qclip-vit-tiny", "qclip-mci-tiny"}
    assert set(full.study.methods) == set(STUDY_METHODS) - {"clip-reference", "clip-synthetic-captions-only", "boxes"}
    assert set(demo.study.methods) <= set(full.study.methods)
    assert full.study.captioner == demo.study.captioner == "assets/captioners/tiny"
    for section in ("world", "captioner", "pretrain"):
        assert asdict(getattr(demo, section)) == asdict(getattr(full, section)), section
    # the same probes; full.yaml reads the data-efficiency curve at one more fraction than the demo
    assert {**asdict(demo.transfer), "data_fractions": None} == {**asdict(full.transfer), "data_fractions": None}
    assert set(demo.transfer.data_fractions) < set(full.transfer.data_fractions)
    assert len(demo.transfer.data_fractions) >= 4  # docs/DESIGN.md: at least four points for a curve


def test_pretrain_recipe_is_the_papers_setting():
    t = load_config(ROOT / "configs" / RECIPES[0]).pretrain
    global_batch = t.batch_size * t.accum_steps * 256  # 32 nodes x 8 GPUs, as the recipe's torchrun lines
    assert (t.model, t.image_size, global_batch) == ("ViT-B-16", 224, 65536)
    assert t.steps * global_batch == pytest.approx(13e9, rel=1e-4)


@pytest.mark.slow
def test_pretrain_recipe_runs(world_dir, coca_dir, tmp_path):
    from qclip.captions.captioners import Sampling, create_captioner
    from qclip.captions.recaption import recaption
    from qclip.train.pretrain import pretrain

    # the recipe's captions come from coca_ViT-L-14 (a hub download); a tiny CoCa stands in under the same id
    recaption(world_dir / "pool", tmp_path / "pool", create_captioner(f"local-dir:{coca_dir}", captioner_id="coca"),
              1, Sampling(num_beams=1, max_len=8), 16, progress=False)
    cfg = load_config(ROOT / "configs" / RECIPES[0],
                      ["pretrain.image_size=32", "pretrain.batch_size=4", "pretrain.steps=2", "pretrain.warmup_steps=1",
                       "pretrain.workers=0", "pretrain.precision=fp32", "pretrain.checkpoint_every=2", "pretrain.log_every=1"])
    pretrain(cfg, tmp_path / "pool", tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    model_cfg = json.loads((tmp_path / "run" / "model" / "open_clip_config.json").read_text())["model_cfg"]
    assert model_cfg["vision_cfg"]["width"] == 768 and model_cfg["vision_cfg"]["patch_size"] == 16


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ade20k_recipe_runs(tmp_path):
    from qclip.transfer.run import run_transfer

    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 6), ("validation", 2)):
        for i in range(n):
            _save(root / "images" / split / f"ADE_{split}_{i:08d}.jpg", _rgb(48, 64, i))
            m = np.zeros((48, 64), np.uint8)
            m[:, 32:] = 1 + (i % 150)
            m[10:20, 10:20] = 150
            _save(root / "annotations" / split / f"ADE_{split}_{i:08d}.png", m)
    cfg = load_config(ROOT / "configs" / RECIPES[1], SMALL_TRANSFER)
    t = cfg.transfer
    assert (t.mode, t.scale_range, t.steps) == ("finetune", [0.5, 2.0], 2)
    # mmsegmentation's MAE ViT-B/16 UperNet recipe, item by item (docs/dense_protocols.md)
    full = load_config(ROOT / "configs" / RECIPES[1]).transfer
    assert (full.image_size, full.resize_scale, full.cat_max_ratio, full.photometric, full.hflip) == (
        512, [2048, 512], 0.75, True, True)
    assert (full.layer_decay, full.schedule, full.warmup_steps, full.steps, full.batch_size, full.lr,
            full.encoder_lr_mult, full.weight_decay) == (0.65, "poly", 1500, 160000, 16, 1e-4, 1.0, 0.05)
    assert (full.aux_loss_weight, full.decoder_width, full.eval_mode, full.eval_stride) == (0.4, 768, "slide", 256)
    assert (full.level_indices, full.grad_clip) == ([3, 5, 7, 11], 0)
    s = run_transfer(cfg, "random:qclip-vit-tiny", root, tmp_path / "out", progress=False)
    assert s["layout"] == "ade20k" and s["num_classes"] == 150
    assert [r["data_fraction"] for r in s["results"]] == [0.1, 1.0]
    assert all(0 <= r["metrics"]["mIoU"] <= 1 and np.isfinite(r["final_train_loss"]) for r in s["results"])


def test_nyuv2_recipe_runs(tmp_path):
    from qclip.transfer.run import run_transfer

    root = tmp_path / "nyu"
    for split, n, (h, w) in (("train", 4, (60, 80)), ("test", 2, (480, 640))):  # test at NYUv2's size: Eigen crop
        for i in range(n):
            _save(root / split / "kitchen_0001" / f"rgb_{i:05d}.jpg", _rgb(h, w, i))
            depth = np.full((h, w), 1500 + 500 * i, np.uint16)  # millimetres
            depth[: h // 2] = 4000
            _save(root / split / "kitchen_0001" / f"sync_depth_{i:05d}.png", depth)
    cfg = load_config(ROOT / "configs" / RECIPES[2], SMALL_TRANSFER)
    assert (cfg.transfer.task, cfg.transfer.eigen_crop, cfg.transfer.depth_loss) == ("depth", True, "silog")
    s = run_transfer(cfg, "random:qclip-vit-tiny", root, tmp_path / "out", progress=False)
    assert s["layout"] == "nyu" and [r["data_fraction"] for r in s["results"]] == [0.1, 1.0]
    assert all(np.isfinite(r["metrics"]["RMSE"]) and r["metrics"]["RMSE"] > 0 for r in s["results"])


def test_the_study_ties_every_image_size_to_the_worlds():
    from qclip.config import ConfigError
    from qclip.study import check_image_sizes

    for name in STUDY_CONFIGS:
        check_image_sizes(load_config(ROOT / "configs" / name))
    with pytest.raises(ConfigError, match="transfer.image_size = 128: set them to 64"):
        check_image_sizes(load_config(ROOT / "configs" / "demo.yaml", ["transfer.image_size=128"]))
    with pytest.raises(ConfigError, match="the image size of qclip-mci-tiny"):
        check_image_sizes(load_config(ROOT / "configs" / "demo.yaml", ["world.image_size=96",
                                                                       "captioner.image_size=96",
                                                                       "transfer.image_size=96"]))


def test_a_preset_edited_in_place_does_not_reuse_its_old_stages(tmp_path, monkeypatch):
    """The stage cache keys a model by its config's content, not its name: a changed preset retrains. And by the
    world: random init's transfer rows are not reused from another world."""
    import copy

    import open_clip

    from qclip.study import StageCache, _pretrain_stage, method_config, study_method

    class Recorder(StageCache):
        def run(self, name, key, out_dir, fn, label="", every_rank=False):  # records nothing, trains nothing
            return {"retrieval": {}, "zeroshot": {}}

    cfg = load_config(ROOT / "configs" / "demo.yaml")

    def keys(world: str = "w") -> list[str]:
        cache, out = Recorder(tmp_path, fresh=False), []
        for name in ("random", "clip-raw", "mim"):
            m = study_method(name, cfg.study.mix_p)
            mcfg = method_config(cfg, "qclip-mci-tiny", m, 0)
            k = _pretrain_stage(mcfg, m, "qclip-mci-tiny", f"seed0/{name}", tmp_path, tmp_path / "world",
                                {"world": world, "recaption": {}}, cache, False)[1]
            out.append(k)
        return out

    before = keys()
    assert before == keys()  # the same config: the same keys
    # another world: every stage key changes, random init's too (it keys the transfers, which read the world)
    assert all(a != b for a, b in zip(before, keys("w2")))
    edited = copy.deepcopy(open_clip.get_model_config("qclip-mci-tiny"))
    edited["text_cfg"]["layers"] += 1
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "qclip-mci-tiny", edited)
    after = keys()
    assert after[0] == before[0]  # random init uses the image tower only
    assert after[1] != before[1] and after[2] != before[2]


@pytest.mark.slow
def test_the_study_on_your_own_data_recipe_runs(world_dir, coca_dir, tmp_path):
    """configs/study_datacomp_ade20k_nyu.yaml as written but for its paths (the pool ingested from img2dataset
    shards, ADE20k and NYU layouts written from world scenes), hub models (a tiny CoCa for coca_ViT-L-14, the
    given towers' architectures without their weights) and sizes: ViT-B/16 CLIP, the recipes' heads and layouts."""
    from qclip.config import dense_transfer
    from qclip.data.importers import img2dataset_candidates, ingest
    from qclip.data.shards import ShardReader
    from qclip.study import run_study
    from test_own_data import write_ade20k, write_nyu

    cfg = load_config(ROOT / "configs" / RECIPES[3])
    assert (cfg.pretrain.model, cfg.study.encoders, cfg.pretrain.steps) == ("ViT-B-16", ["ViT-B-16"], 198364)
    assert [dense_transfer(cfg, d).mode for d in cfg.study.dense] == ["finetune", "finetune"]
    assert dense_transfer(cfg, cfg.study.dense[0]).num_classes == 150 and cfg.study.given["mae"].startswith("timm:")
    # the pool as img2dataset writes it: NNNNN.jpg + NNNNN.txt + NNNNN.json per sample in tars
    import io
    import tarfile

    shard = tmp_path / "img2dataset" / "00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i, s in enumerate(ShardReader(world_dir / "pool")):
            raw = (s.captions.get("raw") or [""])[0]
            buf = io.BytesIO()
            s.pil().resize((80, 80)).save(buf, format="JPEG", quality=92)
            for ext, data in (("jpg", buf.getvalue()), ("txt", raw.encode()),
                              ("json", json.dumps({"key": f"{i:05d}", "caption": raw}).encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    import dataclasses

    # the world's 7% of empty alt-text are skipped and counted, as the README's chain allows
    ingest(img2dataset_candidates([str(shard)], []), tmp_path / "pool",
           dataclasses.replace(cfg.ingest, max_bad_fraction=0.15), "img2dataset", progress=False)
    small = {"image_size": 32, "steps": 1, "batch_size": 2, "warmup_steps": 1, "decoder_width": 16,
             "eval_batch_size": 4, "workers": 0, "device": "cpu", "data_fractions": [1.0], "checkpoint_every": 0,
             "resize_scale": [], "eval_stride": 0}
    paths = [write_ade20k(world_dir, tmp_path / "ade"), write_nyu(world_dir, tmp_path / "nyu")]
    transfers = [small, {**small, "depth_bins": 8, "eigen_crop": False}]
    dense = [{"name": d.name, "path": str(p), "task": d.task, "layout": d.layout, "recipe": d.recipe, "transfer": t}
             for d, p, t in zip(cfg.study.dense, paths, transfers)]
    over = ["study.pool=" + str(tmp_path / "pool"), f"study.captioner=local-dir:{coca_dir}", "study.captioner_pretrained=",
            "study.caption_beams=1", "study.caption_batch_size=16", "pretrain.image_size=32", "pretrain.batch_size=4",
            "pretrain.steps=1", "pretrain.warmup_steps=1", "pretrain.workers=0", "pretrain.precision=fp32",
            "pretrain.grad_checkpointing=false", "pretrain.local_loss=false",
            "study.given={mae: random:timm:vit_base_patch16_224}", "study.dense=" + json.dumps(dense),
            # one CLIP method (clip-raw's path on a user's pool: tests/test_own_data.py); random init is the given
            # encoders' path without weights
            "study.methods=[clip-synthetic]"]
    small_cfg = load_config(ROOT / "configs" / RECIPES[3], over)
    assert [dense_transfer(small_cfg, d).mode for d in small_cfg.study.dense] == ["finetune", "finetune"]
    results = run_study(small_cfg, tmp_path / "study", progress=False, log=lambda _: None)
    rows = results["rows"]
    assert {(r["dataset"], r["method"]) for r in rows} == {
        (d, m) for d in ("ade20k", "nyuv2") for m in ("clip-synthetic", "mae")}
    assert all(np.isfinite(next(iter(r["metrics"].values()))) for r in rows)
