"""CLIP pretraining: learning, exact resume after SIGKILL, interop with open_clip and timm, untrusted files."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_when, qclip_main
from safetensors.torch import load_file

from qclip.config import load_config
from qclip.data.world_shards import build_world
from qclip.evaluate.retrieval import retrieval_metrics
from qclip.models import ModelError, create_clip
from qclip.models.checkpoint import UnsafeCheckpoint, load_weights
from qclip.train.pretrain import pretrain


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_world")
    cfg = load_config(None, ["world.n_pool=128", "world.n_curated=384", "world.n_dense=0", "world.n_dev=0", "world.n_val=128",
                             "world.shard_size=64", "world.workers=2"])
    build_world(cfg, out, progress=False)
    return out


def train_cfg(*extra):
    return load_config(None, ["pretrain.batch_size=32", "pretrain.steps=12", "pretrain.warmup_steps=2", "pretrain.log_every=2",
                              "pretrain.checkpoint_every=4", "pretrain.workers=0", "pretrain.lr=2e-3",
                              "pretrain.caption_policy=reference", *extra])


@pytest.mark.slow
def test_pretraining_learns(world, tmp_path):
    cfg = train_cfg("pretrain.model=qclip-mci-tiny", "pretrain.lr=5e-3", "pretrain.steps=120", "pretrain.warmup_steps=12",
                    "pretrain.checkpoint_every=1000")
    summary = pretrain(cfg, world / "curated", tmp_path / "run", progress=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = logs[0]["loss"], sum(r["loss"] for r in logs[-3:]) / 3
    assert first > math.log(32) - 0.1  # starts at chance
    assert last < math.log(32) - 0.5, (first, last)  # well below ln(batch)
    assert {"lr", "logit_scale", "images_per_s"} <= set(logs[-1])
    assert summary["steps"] == 120 and (tmp_path / "run" / "tb").is_dir()
    m = retrieval_metrics(create_clip(f"local-dir:{tmp_path / 'run' / 'model'}"), world / "val")
    assert m["n"] == 128 and m["image_to_text_R@1"] >= 3 * m["chance_R@1"], m
    assert m["image_to_text_R@10"] >= 2 * 10 * m["chance_R@1"], m
    assert m["text_to_image_R@10"] >= 2 * 10 * m["chance_R@1"], m
    print("retrieval after 120 steps:", m)


def test_text_lr_mult_puts_the_text_tower_in_its_own_groups():
    from qclip.config import result_keys
    from qclip.train.pretrain import clip_param_groups

    model = create_clip("qclip-mci-tiny").model
    assert len(clip_param_groups(model, train_cfg().pretrain)) == 2  # at 1.0: the groups older checkpoints hold
    # a setting at its neutral value leaves the stage-cache / resume key as runs made before it existed wrote it
    assert "text_lr_mult" not in result_keys(train_cfg().pretrain)
    tc = train_cfg("pretrain.text_lr_mult=0.25").pretrain
    assert result_keys(tc)["text_lr_mult"] == 0.25
    assert result_keys(tc, text_tower=False) == result_keys(train_cfg().pretrain)  # baselines keep their cache
    lr_of = {id(p): g["lr"] for g in clip_param_groups(model, tc) for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)
    for n, p in names.items():
        text = not n.startswith("visual.") and "logit_" not in n
        assert lr_of[id(p)] == pytest.approx(tc.lr * (0.25 if text else 1.0)), n
    assert any(not n.startswith("visual.") and "logit_" not in n for n in names)


def test_channels_last_changes_speed_not_the_result(world, tmp_path):
    """pretrain.channels_last is a performance key: the MCi's convolutions in NHWC give the same losses to float
    rounding, and the result key (stage cache, resume) ignores it."""
    from qclip.config import result_keys

    losses = {}
    for cl in (True, False):
        cfg = train_cfg("pretrain.model=qclip-mci-tiny", "pretrain.steps=4", "pretrain.log_every=1",
                        f"pretrain.channels_last={cl}")
        pretrain(cfg, world / "curated", tmp_path / str(cl), progress=False)
        losses[cl] = [json.loads(x)["loss"] for x in (tmp_path / str(cl) / "metrics.jsonl").read_text().splitlines()]
        assert result_keys(cfg.pretrain) == result_keys(train_cfg("pretrain.model=qclip-mci-tiny",
                                                                  "pretrain.steps=4").pretrain)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4), losses


def test_channels_last_gradients_equal_nchw():
    """The MCi's weight gradients in NHWC equal NCHW's. Its stem's strided 1x1 shortcut (3 input channels) stays
    NCHW: oneDNN's NHWC kernel for that shape corrupts the heap on an AVX2 CPU (this test then aborts) and is
    the same code on AVX-512 (uxlfoundation/oneDNN #6035)."""
    from qclip.optim import to_memory_format

    x = torch.randn(8, 3, 64, 64)
    grads = {}
    for cl in (True, False):
        torch.manual_seed(0)
        visual = create_clip("qclip-mci-tiny").model.visual
        fmt = to_memory_format(visual, cl)
        visual(x.contiguous(memory_format=fmt)).square().mean().backward()
        grads[cl] = {n: p.grad for n, p in visual.named_parameters()}
        if cl:
            shortcut = visual.trunk.stem[0].conv_scale.conv
            assert shortcut.kernel_size == (1, 1) and shortcut.stride == (2, 2) and shortcut.in_channels == 3
            assert shortcut.weight.is_contiguous()  # kept NCHW
            assert visual.trunk.stem[0].conv_kxk[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    scale = max(g.abs().max().item() for g in grads[False].values())
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-3, atol=1e-5 * scale, msg=name)


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "qclip", "pretrain", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(world, tmp_path):
    common = ["--data", str(world / "pool"), "--quiet", "pretrain.batch_size=16", "pretrain.steps=16",
              "pretrain.checkpoint_every=3", "pretrain.log_every=1", "pretrain.workers=1", "pretrain.caption_policy=raw",
              "pretrain.warmup_steps=2", "pretrain.threads=1"]
    code, _, err = qclip_main("pretrain", "--out", str(tmp_path / "ref"), *common)  # the reference: never killed
    assert code == 0, err
    run = tmp_path / "killed"
    # two kills at seeded random points: once a checkpoint at or past `target` has landed, after `delay` more
    # seconds (inside a step, a loader fetch or the next checkpoint write)
    rng = random.Random(5)
    plan = sorted((rng.randint(0, 12), round(rng.uniform(0, 0.4), 2)) for _ in range(2))

    def checkpointed_step() -> int:
        latest = run / "checkpoints" / "latest.json"
        return json.loads(latest.read_text())["step"] if latest.is_file() else -1

    kills = sum(kill_when(_run(["--out", str(run), *common]), checkpointed_step, target, delay)
                for target, delay in plan)
    assert kills == 2, plan
    p = _run(["--out", str(run), *common])
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0 and "resuming at step" in out, out
    a = load_file(tmp_path / "ref" / "model" / "open_clip_model.safetensors")
    b = load_file(run / "model" / "open_clip_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_open_clip_and_timm_load_the_result(world, tmp_path):
    import open_clip

    from qclip.models.export import create_timm_from_export, export_image_tower

    for spec in ("qclip-vit-tiny", "qclip-mci-tiny"):
        run = tmp_path / spec
        pretrain(train_cfg(f"pretrain.model={spec}", "pretrain.steps=2"), world / "curated", run, progress=False)
        ours = create_clip(f"local-dir:{run / 'model'}").model.eval()
        theirs, _, preprocess = open_clip.create_model_and_transforms(
            spec, pretrained=str(run / "model" / "open_clip_model.safetensors"))
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(ours.encode_image(x), theirs.eval().encode_image(x), atol=1e-6)
            export_image_tower(run / "model", tmp_path / f"{spec}-timm")
            tower = create_timm_from_export(tmp_path / f"{spec}-timm").eval()
            assert torch.allclose(tower(x), ours.encode_image(x), atol=1e-4), spec


def test_siglip_and_accumulation(world, tmp_path):
    s = pretrain(train_cfg("pretrain.loss=siglip", "pretrain.steps=2"), world / "curated", tmp_path / "sig", progress=False)
    assert math.isfinite(s["final_loss"])
    w = load_file(tmp_path / "sig" / "model" / "open_clip_model.safetensors")  # open_clip_train's SigLIP init
    assert abs(w["logit_scale"].item() - math.log(10)) < 0.05 and abs(w["logit_bias"].item() + 10) < 0.05
    back = create_clip(f"local-dir:{tmp_path / 'sig' / 'model'}").model  # its bias is a parameter again
    assert torch.equal(back.logit_bias.detach(), w["logit_bias"])
    one = pretrain(train_cfg("pretrain.steps=2", "pretrain.grad_clip=0"), world / "curated", tmp_path / "a1", progress=False)
    two = pretrain(train_cfg("pretrain.steps=2", "pretrain.grad_clip=0", "pretrain.accum_steps=4"), world / "curated",
                   tmp_path / "a4", progress=False)
    # feature caching makes 4 micro-batches of 8 train exactly like one batch of 32
    assert abs(one["final_loss"] - two["final_loss"]) < 1e-4
    wa = load_file(tmp_path / "a1" / "model" / "open_clip_model.safetensors")
    wb = load_file(tmp_path / "a4" / "model" / "open_clip_model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=2e-5) for k in wa)


def test_bad_inputs_are_named(world, tmp_path):
    from qclip.cli import main

    with pytest.raises(ModelError, match="close matches"):
        create_clip("timm:fastvit_mci9")
    with pytest.raises(ModelError, match="qclip preset"):
        create_clip("ViT-B-17")
    assert main(["pretrain", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    # the pool has no synthetic captions yet: the policy leaves nothing to train on, and says why
    assert main(["pretrain", "--data", str(world / "pool"), "--out", str(tmp_path / "r"), "--quiet",
                 "pretrain.caption_policy=synthetic"]) == 2
    assert main(["pretrain", "--data", str(world / "pool"), "--out", str(tmp_path / "r"), "pretrain.caption_policy=mix"]) == 2


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/qclip_pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload()}, path)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        load_weights(path)
    assert not os.path.exists("/tmp/qclip_pwned")
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_distillation_from_stored_teacher_embeddings(world, tmp_path):
    from qclip.data.shards import ShardReader
    from qclip.train.distill import TEACHER_MEMBER, decode_npz, write_teacher_embeddings

    torch.manual_seed(0)
    teacher = create_clip("qclip-mci-tiny")  # a toy teacher: random weights, but a fixed similarity structure
    info = write_teacher_embeddings(world / "curated", tmp_path / "with_teacher", teacher, progress=False)
    assert info["samples"] == 384
    s = next(iter(ShardReader(tmp_path / "with_teacher")))
    t = decode_npz(s.extra[TEACHER_MEMBER])
    keys = [x for x in s.captions["raw"] if x] + s.captions["reference"]
    assert t["image"].shape == (128,) and t["texts"].shape == (len(keys), 128) and list(t["text_keys"]) == keys
    assert abs(float((t["texts"] ** 2).sum(1).mean()) - 1) < 1e-4  # stored normalised

    # pure distillation (λ = 1): the distill loss falls as the student copies the teacher's similarities
    run = tmp_path / "kd"
    s = pretrain(train_cfg("pretrain.distill_weight=1.0", "pretrain.steps=30", "pretrain.log_every=1",
                           "pretrain.model=qclip-mci-tiny"), tmp_path / "with_teacher", run, progress=False)
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    # the one-line summary's loss: the last fifth of the logged steps, not the last (noisy) batch
    assert s["late_loss"] == pytest.approx(sum(losses[-6:]) / 6) and s["final_loss"] == losses[-1]
    # λ = 0 is plain CLIP: the same first-step loss as a run without a teacher
    a = pretrain(train_cfg("pretrain.steps=1", "pretrain.distill_weight=0.0"), world / "curated", tmp_path / "c0", progress=False)
    with pytest.raises(Exception, match="no usable|fewer than one batch"):
        pretrain(train_cfg("pretrain.steps=1", "pretrain.distill_weight=0.5"), world / "curated", tmp_path / "c1", progress=False)
    assert math.isfinite(a["final_loss"])


@pytest.mark.parametrize("extra", [["pretrain.grad_checkpointing=true"], ["pretrain.precision=bf16"],
                                   ["pretrain.model=qclip-mci-tiny", "pretrain.grad_checkpointing=true"]])
def test_loop_options_run(world, tmp_path, extra):
    s = pretrain(train_cfg("pretrain.steps=2", *extra), world / "curated", tmp_path / "run", progress=False)
    assert s["steps"] == 2 and math.isfinite(s["final_loss"])


def test_decoded_cache_gives_the_same_items_and_keeps_to_its_budget(world):
    """Decoded images and tokens are kept after first use; the random crop and the caption draw must not change,
    and a budget smaller than the data keeps only what fits."""
    from qclip.data.policy import CaptionPolicy
    from qclip.train.shard_dataset import ClipShardDataset

    bundle = create_clip("qclip-vit-tiny")
    policy = CaptionPolicy.parse("raw")
    args = (world / "pool", policy, bundle.preprocess_train, bundle.tokenizer, 3)
    plain, cached = ClipShardDataset(*args), ClipShardDataset(*args, cache_mb=100)
    small = ClipShardDataset(*args, cache_mb=0.05)  # 50 kB: a few 64 px images
    assert len(plain) > 100  # pool samples without alt-text are skipped by the raw policy
    for epoch in (0, 1):
        for i in range(len(plain)):
            a = plain[(i, epoch)]
            for b in (cached[(i, epoch)], small[(i, epoch)]):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not plain._decoded and len(cached._decoded) == len(plain)
    assert 0 < len(small._decoded) < len(plain) and small._cache_left >= 0
    assert load_config(None, ["pretrain.cache_mb=0"]).pretrain.cache_mb == 0
    with pytest.raises(ValueError, match="pretrain.cache_mb"):
        load_config(None, ["pretrain.cache_mb=-1"])


def test_every_method_can_be_given_the_images_that_have_alt_text(world):
    """`pretrain.require_raw_caption`: the synthetic policy and the baselines see exactly the images clip-raw sees."""
    from qclip.data.policy import CaptionPolicy
    from qclip.train.baselines import _load_pool
    from qclip.train.shard_dataset import ClipShardDataset

    bundle = create_clip("qclip-vit-tiny")
    args = (bundle.preprocess_train, bundle.tokenizer, 3)
    raw = ClipShardDataset(world / "pool", CaptionPolicy.parse("raw"), *args)
    ref_all = ClipShardDataset(world / "curated", CaptionPolicy.parse("reference"), *args)
    ref_same = ClipShardDataset(world / "curated", CaptionPolicy.parse("reference"), *args, require_raw=True)
    assert len(ref_same) < len(ref_all)  # the curated split has images without alt-text too
    assert ref_same.skips.as_dict().get("no raw caption", 0) == len(ref_all) - len(ref_same)
    images, _ = _load_pool(world / "pool", "", True)
    assert len(images) == len(raw)
    assert len(_load_pool(world / "pool", "", False)[0]) > len(raw)


def test_baselines_get_the_clip_train_augmentation_deterministically(world):
    from qclip.train.baselines import _load_pool, augmented_batch

    bundle = create_clip("qclip-vit-tiny")
    images, _ = _load_pool(world / "pool", "", False)
    a = augmented_batch(images, [0, 1, 2], bundle.preprocess_train, 7)
    assert torch.equal(a, augmented_batch(images, [0, 1, 2], bundle.preprocess_train, 7))
    assert not torch.equal(a, augmented_batch(images, [0, 1, 2], bundle.preprocess_val, 7))  # random crops


def test_a_run_folder_resumes_only_what_it_was_started_with(world, tmp_path, capsys, monkeypatch):
    from qclip.config import ConfigError

    run = tmp_path / "run"
    cfg = train_cfg("pretrain.steps=3", "pretrain.batch_size=16")
    first = pretrain(cfg, world / "curated", run, progress=False)
    summary = (run / "summary.json").read_text()
    again = pretrain(train_cfg("pretrain.steps=3", "pretrain.batch_size=16", "pretrain.log_every=1"), world / "curated", run,
                     progress=False)  # a performance-only key may change: finished, nothing overwritten
    assert again == first and (run / "summary.json").read_text() == summary
    assert "already finished 3 steps" in capsys.readouterr().out
    # a finished run keeps its model folder, not its training states (pretrain.keep_checkpoints=0)
    assert not list((run / "checkpoints").glob("step_*")) and not (run / "checkpoints" / "latest.json").exists()
    kept = tmp_path / "kept"
    pretrain(train_cfg("pretrain.steps=4", "pretrain.batch_size=16", "pretrain.checkpoint_every=1", "pretrain.keep_checkpoints=2"),
             world / "curated", kept, progress=False)
    assert sorted(p.name for p in (kept / "checkpoints").glob("step_*.safetensors")) == [
        "step_00000003.safetensors", "step_00000004.safetensors"]
    assert "s/step measured; the 1 steps left need about" in capsys.readouterr().out  # the cost, told up front
    for changed, msg in ((("pretrain.steps=5",), "pretrain.steps: 3 -> 5"), (("pretrain.lr=1e-2",), "pretrain.lr: 0.002 -> 0.01")):
        with pytest.raises(ConfigError, match="started with other settings") as e:
            pretrain(train_cfg("pretrain.steps=3", "pretrain.batch_size=16", *changed), world / "curated", run, progress=False)
        assert msg.split(" -> ")[0] in str(e.value) and "Pass a new --out" in str(e.value)
    import copy

    import open_clip  # the same name, another architecture: a preset edited in place is another run
    edited = copy.deepcopy(open_clip.get_model_config(cfg.pretrain.model))
    edited["text_cfg"]["layers"] += 1
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, cfg.pretrain.model, edited)
    with pytest.raises(ConfigError, match="the config of model .* changed"):
        pretrain(cfg, world / "curated", run, progress=False)
    monkeypatch.undo()
    # --fresh: the same folder restarts with the new settings, removing only what pretraining wrote there
    (run / "notes.txt").write_text("mine")
    new = train_cfg("pretrain.steps=2", "pretrain.batch_size=16")
    assert pretrain(new, world / "curated", run, progress=False, start_mode="fresh")["steps"] == 2
    assert (run / "notes.txt").read_text() == "mine" and "removed the previous run" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no pretraining checkpoint to resume"):  # --resume needs something to resume
        pretrain(new, world / "curated", tmp_path / "empty", progress=False, start_mode="resume")
    # another dataset put at the same path: compared by content (its manifest), not by the path
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world / "curated", data)
    pretrain(new, data, tmp_path / "on-data", progress=False)
    m = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**m, "name": "another dataset"}))
    with pytest.raises(ConfigError, match="is another one than the run started on"):
        pretrain(new, data, tmp_path / "on-data", progress=False)


@pytest.mark.parametrize("damage", ["member_boundary", "mid_member", "header"])
def test_pretraining_refuses_a_damaged_shard_and_names_it(world, tmp_path, damage):
    import shutil

    from qclip.data.policy import CaptionPolicy
    from qclip.train.shard_dataset import ClipShardDataset, TrainDataError

    data = tmp_path / "pool"
    shutil.copytree(world / "pool", data)
    shard = sorted((data / "shards").glob("*.tar"))[0]
    import tarfile

    raw = shard.read_bytes()
    with tarfile.open(shard) as tf:
        middle = tf.getmembers()[len(tf.getmembers()) // 2]
    if damage == "member_boundary":  # whole samples missing, the tar still ends cleanly
        shard.write_bytes(raw[: middle.offset] + b"\0" * 1024)
    elif damage == "mid_member":
        shard.write_bytes(raw[: middle.offset_data + 100])
    else:  # a damaged header in the middle
        b = bytearray(raw)
        b[middle.offset:middle.offset + 512] = b"\xff" * 512
        shard.write_bytes(bytes(b))
    bundle = create_clip("qclip-vit-tiny")
    with pytest.raises(TrainDataError, match=shard.name):
        ClipShardDataset(data, CaptionPolicy.parse("raw"), bundle.preprocess_train, bundle.tokenizer, 0)


def test_weights_and_biases_logging_offline(world, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wb"
    pretrain(train_cfg("pretrain.steps=2", "pretrain.batch_size=16", "pretrain.log_every=1", "pretrain.wandb_project=qclip-test"),
             world / "curated", run, progress=False)
    logs = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0
    assert (run / "tb").is_dir() and (run / "summary.json").is_file()  # beside TensorBoard, not instead


def test_push_to_hub_stages_a_loadable_folder_and_uploads_it(world, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import open_clip

    from qclip.cli import main

    run = tmp_path / "run"
    pretrain(train_cfg("pretrain.steps=1", "pretrain.batch_size=16"), world / "curated", run, progress=False)
    assert main(["push", "--model", str(run / "model"), "--repo", "me/qclip-tiny", "--dry-run"]) == 0
    assert "push (dry run): would upload" in capsys.readouterr().out
    staged = run / ".hub_upload"
    assert {"README.md", "open_clip_config.json", "open_clip_model.safetensors", "config.yaml", "run.json",
            "summary.json"} <= {p.name for p in staged.iterdir()}
    card = (staged / "README.md").read_text()
    assert "library_name: open_clip" in card and 'create_model_and_transforms("hf-hub:me/qclip-tiny")' in card
    assert "1 steps, contrastive loss" in card and "over the last fifth" in card  # from the run's summary.json
    open_clip.create_model_and_transforms(f"local-dir:{staged}")  # what hf-hub: will load
    calls = []

    class FakeApi:  # the Hub without the network: record what would be sent
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))

        def upload_folder(self, repo_id, folder_path, **kw):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["push", "--model", str(run / "model"), "--repo", "me/qclip-tiny", "--private"]) == 0
    assert calls[0] == ("create", "me/qclip-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][0] == "upload" and "open_clip_model.safetensors" in calls[1][2]
    assert "hf-hub:me/qclip-tiny" in capsys.readouterr().out and not staged.exists()
    assert main(["push", "--model", str(run), "--repo", "me/x", "--dry-run"]) == 2  # the run, not its model folder
    assert "not a qclip model folder" in capsys.readouterr().err


def test_chance_loss_is_what_open_clip_gives_an_encoder_that_tells_no_pair_apart():
    from open_clip.loss import ClipLoss, SigLipLoss

    from qclip.train.pretrain import chance_loss

    b = 16
    f = torch.nn.functional.normalize(torch.ones(b, 8), dim=-1)  # every image and text embedded the same
    scale = torch.tensor(10.0)
    assert ClipLoss()(f, f, scale).item() == pytest.approx(chance_loss("clip", b), rel=1e-5)
    bias = torch.tensor(math.log((1 / b) / (1 - 1 / b))) - scale  # sigmoid(scale * 1 + bias) = 1 / B, the best bias
    assert SigLipLoss()(f, f, scale, bias).item() == pytest.approx(chance_loss("siglip", b), rel=1e-5)
