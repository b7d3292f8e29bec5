"""SIGKILL at random points (twice, and the study once more inside a baseline), then re-run: `qclip caption run` and `qclip run` finish, lose and duplicate
nothing, and equal an uninterrupted run (pretraining's bitwise check is tests/test_pretrain.py).

The kill points are drawn from a seeded generator (printed on failure): each waits for some progress (a
finished shard or stage) and then a random extra delay, so kills land inside a batch, a write or a stage."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_when, qclip_main

from qclip.config import load_config
from qclip.data.shards import ShardReader
from qclip.data.world_shards import build_world

pytestmark = pytest.mark.slow


def _qclip(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qclip", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill_world")
    cfg = load_config(None, ["world.n_pool=96", "world.n_curated=0", "world.n_dense=0", "world.n_dev=0", "world.n_val=0",
                             "world.shard_size=12", "world.workers=1"])
    build_world(cfg, out, progress=False)
    return out / "pool"


def _captions(d: Path) -> dict[str, list[str]]:
    return {s.key: s.captions["synthetic"]["tiny"] for s in ShardReader(d)}


def test_caption_run_killed_twice_equals_uninterrupted(pool, coca_dir, tmp_path):
    args = ["caption", "run", "--data", str(pool), "--captioner", str(coca_dir), "--id", "tiny", "--n", "2",
            "--num-beams", "1", "--max-len", "10", "--batch-size", "6", "--quiet"]
    code, _, err = qclip_main(*args, "--out", str(tmp_path / "ref"))  # the reference: never killed
    assert code == 0, err
    out = tmp_path / "killed"
    rng = random.Random(8)
    plan = sorted((rng.randint(0, 6), round(rng.uniform(0.0, 0.6), 2)) for _ in range(2))

    def shards_done() -> int:  # finished shards land in the staging area first, then move into place
        return len(list(out.rglob("*.tar"))) if out.exists() else 0

    kills = [kill_when(_qclip([*args, "--out", str(out)]), shards_done, t, d) for t, d in plan]
    assert sum(kills) == 2, f"plan {plan}: a run finished before it could be killed"
    final = _qclip([*args, "--out", str(out)])
    text = final.communicate(timeout=300)[0]
    assert final.returncode == 0, text
    got, want = _captions(out), _captions(tmp_path / "ref")
    assert got.keys() == want.keys() and len(got) == 96, f"plan {plan}: lost or duplicated samples"
    assert got == want, f"plan {plan}: captions differ from the uninterrupted run"
    assert all(len(v) == 2 for v in got.values())


STUDY = ["world.n_pool=48", "world.n_curated=24", "world.n_dense=16", "world.n_dev=4", "world.n_val=12", "world.shard_size=24",
         "world.workers=1", "captioner.steps=4", "captioner.batch_size=8", "captioner.warmup_steps=1",
         "captioner.workers=0", "captioner.checkpoint_every=2", "pretrain.steps=6", "pretrain.batch_size=8",
         "pretrain.warmup_steps=1", "pretrain.workers=0", "pretrain.checkpoint_every=2", "transfer.steps=3",
         "transfer.batch_size=4", "transfer.decoder_width=8", "transfer.data_fractions=[1.0]",
         "study.caption_beams=1", "study.encoders=[qclip-mci-tiny]", "study.methods=[clip-raw,clip-synthetic,random,mim]",
         "study.tasks=[segmentation]", "study.captioner="]  # the study trains (and resumes) its captioner


def _rows(out: Path) -> list[tuple]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return sorted((r["encoder"], r["method"], r["task"], str(r.get("data_fraction")), json.dumps(r["metrics"],
                   sort_keys=True)) for r in rows)


def test_study_killed_three_times_equals_uninterrupted(tmp_path):
    args = ["run", "--config", "configs/demo.yaml", "--quiet", *STUDY]
    code, _, err = qclip_main(*args, "--out", str(tmp_path / "ref"))  # the reference: never killed
    assert code == 0, err[-3000:]
    out = tmp_path / "killed"
    rng = random.Random(3)
    plan = sorted((rng.randint(0, 5), round(rng.uniform(0.0, 1.5), 2)) for _ in range(2))

    def stages_done() -> int:
        return len(list((out / "stages").glob("*.json"))) if (out / "stages").is_dir() else 0

    kills = [kill_when(_qclip([*args, "--out", str(out)]), stages_done, t, d, timeout=600) for t, d in plan]
    assert sum(kills) == 2, f"plan {plan}: a run finished before it could be killed"
    # and once inside the masked image modeling baseline, after its first training state: it resumes there
    mim_ckpt = out / "pretrain" / "seed0" / "qclip-mci-tiny-mim" / "checkpoints" / "latest.json"

    def mim_step() -> int:
        return json.loads(mim_ckpt.read_text())["step"] if mim_ckpt.is_file() else -1

    assert kill_when(_qclip([*args, "--out", str(out)]), mim_step, 2, 0.0, timeout=600), "mim was not killed"
    final = _qclip([*args, "--out", str(out)])
    text = final.communicate(timeout=600)[0]
    assert final.returncode == 0, text[-3000:]
    assert "pretrain mim (spark): resuming at step" in text, text[-3000:]
    assert _rows(out) == _rows(tmp_path / "ref"), f"plan {plan}: results differ from the uninterrupted run"
    assert (out / "report.html").is_file()
