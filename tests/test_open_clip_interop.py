"""qclip shards must train unchanged with `open_clip_train --dataset-type webdataset` (DESIGN.md, Data)."""
import json
import subprocess
import sys

import pytest

TINY = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}


@pytest.mark.slow
def test_open_clip_train_runs_on_qclip_shards(world_dir, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY))
    shard = sorted((world_dir / "pool" / "shards").glob("*.tar"))[0]
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", str(shard), "--train-num-samples", "16",
           "--dataset-type", "webdataset", "--model", f"local-dir:{model_dir}", "--batch-size", "4",
           "--epochs", "1", "--workers", "0", "--device", "cpu", "--logs", str(logs), "--name", "qclip-shards",
           "--log-every-n-steps", "1", "--seed", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (logs / "qclip-shards" / "out.log").read_text()
    assert "Train Epoch: 0 [16/16 (100%)]" in log and "Contrastive_loss" in log
    assert (logs / "qclip-shards" / "checkpoints" / "epoch_1.pt").is_file()
