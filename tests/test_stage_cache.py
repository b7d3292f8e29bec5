"""The study's stage cache reuses a stage only when its record can be read and its outputs are still there,
and a model folder without weights is never used as a trained model (docs/RELIABILITY.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qclip.study import StageCache


def _stage(out: Path, calls: list):
    def fn():
        calls.append(1)
        d = out / "pretrain" / "s"
        (d / "model").mkdir(parents=True, exist_ok=True)
        (d / "model" / "open_clip_model.safetensors").write_bytes(b"w" * 10)
        (d / "config.yaml").write_text("seed: 0\n")
        return {"loss": 1.0}
    return fn


def test_a_stage_whose_outputs_were_deleted_runs_again(tmp_path, capsys):
    calls: list = []
    run = lambda: StageCache(tmp_path, fresh=False).run("pretrain-s", "k1", tmp_path / "pretrain" / "s",  # noqa: E731
                                                       _stage(tmp_path, calls))
    assert run() == {"loss": 1.0} and len(calls) == 1
    run()
    assert len(calls) == 1  # intact: reused
    (tmp_path / "pretrain" / "s" / "model" / "open_clip_model.safetensors").unlink()  # a disk clean-up
    run()
    assert len(calls) == 2 and "outputs changed since it ran" in capsys.readouterr().out
    (tmp_path / "pretrain" / "s" / "model" / "open_clip_model.safetensors").write_bytes(b"other")  # replaced
    run()
    assert len(calls) == 3


@pytest.mark.parametrize("content", ["", "{\"key\": \"k1\", \"res", "[]"])
def test_an_empty_or_cut_short_stage_record_counts_as_missing(tmp_path, content):
    calls: list = []
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "pretrain-s.json").write_text(content)
    r = StageCache(tmp_path, fresh=False).run("pretrain-s", "k1", tmp_path / "pretrain" / "s", _stage(tmp_path, calls))
    assert r == {"loss": 1.0} and len(calls) == 1
    assert json.loads((tmp_path / "stages" / "pretrain-s.json").read_text())["key"] == "k1"


def _config_only_folder(tmp_path: Path) -> Path:
    from qclip.models.factory import resolve_model_cfg

    d = tmp_path / "clip-raw" / "model"
    d.mkdir(parents=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": resolve_model_cfg("qclip-vit-tiny")[1]}))
    return d


def test_a_model_folder_without_weights_is_an_error_for_transfer_and_eval(tmp_path, world_dir, capsys):
    from qclip.cli import main
    from qclip.transfer.encoders import EncoderError, load_encoder

    d = _config_only_folder(tmp_path)
    with pytest.raises(EncoderError, match="no weights"):
        load_encoder(str(d), 64)
    assert main(["eval", "--model", str(d), "--data", str(world_dir / "val")]) == 2
    assert "holds open_clip_config.json but no weights" in capsys.readouterr().err
    assert main(["caption", "score", "--data", str(world_dir / "val"), "--scorer", str(d), "--out",
                 str(tmp_path / "scored")]) == 2
    assert not (tmp_path / "scored").exists()


def test_a_model_folder_with_a_cut_short_or_unknown_config_is_a_model_error(tmp_path):
    from qclip.transfer.encoders import EncoderError, load_encoder

    d = _config_only_folder(tmp_path)
    (d / "open_clip_model.safetensors").write_bytes(b"")
    text = (d / "open_clip_config.json").read_text()
    (d / "open_clip_config.json").write_text(text[: len(text) // 2])
    with pytest.raises(EncoderError, match="cut short or not an open_clip model config"):
        load_encoder(str(d), 64)
    cfg = json.loads(text)
    cfg["model_cfg"]["vision_cfg"] = {"timm_model_name": "no_such_tower_v9", "image_size": 64}
    (d / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderError, match="unknown timm model 'no_such_tower_v9'"):
        load_encoder(str(d), 64)
    timm_dir = tmp_path / "exported"
    timm_dir.mkdir()
    (timm_dir / "config.json").write_text('{"architecture": "vit_tiny')
    with pytest.raises(EncoderError):
        load_encoder(f"timm:local-dir:{timm_dir}", 64)


def test_export_of_a_model_folder_without_weights_is_one_line(tmp_path, capsys):
    from qclip.cli import main

    d = _config_only_folder(tmp_path)
    assert main(["export", "--model", str(d), "--out", str(tmp_path / "exported")]) == 2
    assert "error:" in capsys.readouterr().err
