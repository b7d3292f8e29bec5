import json
import subprocess
import sys

import pytest
import yaml

from qclip.cli import build_parser, main

SUBCOMMANDS = ["run", "world", "ingest", "caption", "pretrain", "teacher", "export", "transfer", "eval", "report"]


def test_help_lists_every_subcommand_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    for name in [c for c in SUBCOMMANDS if c != "ingest"] + ["ingest table", "ingest coco", "ingest img2dataset"]:
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        text = capsys.readouterr().out
        assert "--config" in text and "(default:" in text, name
    with pytest.raises(SystemExit):
        main(["world", "--help"])
    assert "(built-in 10000)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert "qclip ingest SOURCE --help" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["transfer", "report"])
def test_unfinished_subcommands_say_so(name, capsys):
    assert main([name]) != 0
    err = capsys.readouterr().err
    assert err.strip().endswith(")") and "not yet available" in err and len(err.strip().splitlines()) == 1


def test_config_error_names_key(capsys):
    assert main(["run", "--config", "configs/demo.yaml", "train.batchsize=64"]) == 2
    err = capsys.readouterr().err
    assert "train.batchsize" in err and "batch_size" in err


def test_world_command_writes_provenance(tmp_path, capsys):
    out = tmp_path / "w"
    rc = main(["world", "--out", str(out), "--n", "20", "--seed", "3", "--preview", "--quiet",
               "world.n_curated=4", "world.n_dense=4", "world.n_val=4", "world.workers=1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "world: 32 samples (curated 4, dense 4, val 4, pool 20)" in text
    run = json.loads((out / "run.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["world"]["n_pool"] == 20
    assert run["versions"]["torch"] and run["versions"]["open_clip_torch"] == "3.3.0" and run["git_commit"]
    assert (out / "preview.png").is_file()


def test_run_runs_what_exists_and_says_so(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "qclip", "run", "--config", "configs/demo.yaml", "--out", str(out), "--quiet",
           "world.n_pool=32", "world.n_curated=8", "world.n_dense=8", "world.n_val=8", "world.workers=1",
           "world.alt_text_relevance=1.0", "train.steps=2", "train.batch_size=8", "train.workers=0",
           "train.warmup_steps=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "verified pool: 32 samples" in res.stdout and "not yet available" in res.stdout
    assert "pretrain: 2 steps" in res.stdout and "zero-shot retrieval on val (reference text)" in res.stdout
    assert (out / "world_preview.png").is_file() and (out / "config.yaml").is_file()
    results = json.loads((out / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"retrieval-raw", "retrieval-reference"}
    assert results["versions"]["torch"] and results["config"]["train"]["steps"] == 2
    assert all(0 <= r["metrics"]["image_to_text_R@1"] <= 1 for r in results["rows"])
    res2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert "generated 0" in res2.stdout and "reused" in res2.stdout  # cached on re-run
    assert "resuming at step 2" in res2.stdout  # the finished pretraining is not redone


def test_parser_builds():
    assert build_parser().prog == "qclip"
