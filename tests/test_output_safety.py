"""qclip deletes only what it wrote and resumes only what matches (issue: reliability II)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qclip.data.shard_job import map_shards
from qclip.data.shards import OutputFolderError, ShardReader, ShardWriter, ensure_replaceable


def test_only_empty_folders_and_qclip_datasets_are_replaced(tmp_path, world_dir):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not a qclip dataset"):
        ensure_replaceable(notes)
    with pytest.raises(OutputFolderError):
        ShardWriter(notes)
    with pytest.raises(OutputFolderError):
        ensure_replaceable(world_dir)  # the parent of datasets is not one
    (tmp_path / "empty").mkdir()
    ensure_replaceable(tmp_path / "empty")
    ensure_replaceable(world_dir / "pool")
    ensure_replaceable(tmp_path / "missing")
    assert (notes / "todo.txt").read_text() == "mine"


def _tagging(tag: str, fail_after: int | None = None):
    done = []

    def process(samples, skips, bar):
        if fail_after is not None and len(done) >= fail_after:
            raise KeyboardInterrupt  # killed mid-run: the finished shards stay in staging
        for s in samples:
            s.meta["job"] = tag
        done.append(1)
        return {"tagged": len(samples)}

    def manifest_update(info):
        return {**info, "tag": tag}
    return process, manifest_update


def test_a_resumed_shard_job_with_other_settings_starts_afresh(world_dir, tmp_path):
    out = tmp_path / "captioned"
    assert len(ShardReader(world_dir / "pool").shards) >= 2
    with pytest.raises(KeyboardInterrupt):
        map_shards(world_dir / "pool", out, *_tagging("first", fail_after=1), desc="first", progress=False)
    assert list((tmp_path / "captioned.partial" / "shards").glob("*.tar"))  # one finished shard waits
    map_shards(world_dir / "pool", out, *_tagging("second"), desc="second", progress=False)
    samples = list(ShardReader(out))
    assert samples and {s.meta["job"] for s in samples} == {"second"}
    assert ShardReader(out).manifest["tag"] == "second" and not (out / "job.json").exists()
    # the same job resumes: its finished shard is kept, not redone
    out2 = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        map_shards(world_dir / "pool", out2, *_tagging("same", fail_after=1), desc="same", progress=False)
    s = map_shards(world_dir / "pool", out2, *_tagging("same"), desc="same", progress=False)
    assert s["resumed_shards"] == 1 and {x.meta["job"] for x in ShardReader(out2)} == {"same"}


@pytest.mark.slow
def test_caption_and_ingest_refuse_to_replace_a_users_folder(world_dir, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    res = subprocess.run([sys.executable, "-m", "qclip", "caption", "score", "--data", str(world_dir / "val"),
                          "--out", str(notes), "--scorer", "qclip-vit-tiny"], capture_output=True, text=True)
    assert res.returncode != 0 and "qclip only replaces datasets it wrote" in res.stderr + res.stdout
    assert (notes / "todo.txt").read_text() == "mine"
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(images / "a.png")
    (images / "t.csv").write_text("path,caption\na.png,a red square\n")
    res = subprocess.run([sys.executable, "-m", "qclip", "ingest", "table", "--images", str(images), "--table",
                          str(images / "t.csv"), "--out", str(images), "--overwrite"], capture_output=True, text=True)
    assert res.returncode != 0 and "qclip only replaces datasets it wrote" in res.stderr + res.stdout
    assert (images / "a.png").is_file() and (images / "t.csv").is_file()
    assert json.loads(json.dumps(sorted(p.name for p in images.iterdir()))) == ["a.png", "t.csv"]


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path):
    first = ShardWriter(tmp_path / "ds")
    with pytest.raises(OutputFolderError, match=rf"another qclip process \(pid {os.getpid()}\) is writing"):
        ShardWriter(tmp_path / "ds")
    first.abort()
    ShardWriter(tmp_path / "ds").abort()  # free again once the first is done
    assert not list(tmp_path.glob(".ds.lock"))


def test_damaged_weights_are_refused_in_one_line(tmp_path, world_dir, capsys):
    from qclip.cli import main
    from qclip.models import create_clip
    from qclip.models.checkpoint import MODEL_WEIGHTS, save_model_dir

    b = create_clip("qclip-vit-tiny")
    save_model_dir(b.model, b.model_cfg, b.preprocess_cfg, tmp_path / "m")
    (tmp_path / "m" / MODEL_WEIGHTS).write_bytes((10**15).to_bytes(8, "little") + b"{}")  # a header that lies
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(world_dir / "val")]) == 2
    err = capsys.readouterr().err
    assert "qclip eval: error:" in err and "Traceback" not in err


class _Payload:
    def __reduce__(self):
        return (os.system, (f"echo pwned > {_PWNED}",))


_PWNED = "/tmp/qclip_pwned_hub"


def test_pickled_weights_from_the_hub_or_a_file_are_refused_in_one_line(tmp_path, world_dir, capsys, monkeypatch):
    """open_clip's own loader (a `--pretrained` file, or `MODEL --pretrained TAG` whose hub download is stubbed here
    to hand over the same file): the pickle's code never runs, one error line, exit 2."""
    import open_clip.factory
    import torch

    from qclip.cli import main

    evil = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"state_dict": {}, "x": _Payload()}, evil)
    import open_clip.pretrained as ocp

    # a hub tag for the small preset (as open_clip lists RN50's "openai"), downloaded as the stub says
    monkeypatch.setitem(ocp._PRETRAINED, "qclip-vit-tiny", {"hubtag": ocp._pcfg(hf_hub="someone/weights/")})
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(evil))
    for args in (["--model", "qclip-vit-tiny", "--pretrained", "hubtag"],
                 ["--model", "qclip-vit-tiny", "--pretrained", str(evil)]):
        assert main(["eval", *args, "--data", str(world_dir / "val"), "--max-samples", "4"]) == 2, args
        err = capsys.readouterr().err
        assert "qclip eval: error:" in err and "pickle" in err and "Traceback" not in err, err
    assert not os.path.exists(_PWNED)


def test_out_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys):
    """--out naming an existing file for a command that writes a folder (world, pretrain, transfer), and an
    existing folder for eval (one JSON file): one message, exit 2, the file intact and nothing run."""
    from qclip.cli import main

    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for argv in (["world", "--out", str(f), "--n", "4"], ["pretrain", "--data", str(tmp_path), "--out", str(f)],
                 ["transfer", "--encoder", "random:qclip-vit-tiny", "--data", str(tmp_path), "--out", str(f)]):
        assert main(argv) == 2
        assert "is a file; qclip" in capsys.readouterr().err
        assert f.read_text() == "mine"
    assert main(["eval", "--model", "random:qclip-vit-tiny", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a folder; qclip eval writes one JSON file" in capsys.readouterr().err


def test_an_existing_shard_path_with_brackets_is_taken_as_itself(tmp_path):
    from qclip.data.importers import expand_shards

    shard = tmp_path / "shard [1] {a}.tar"
    shard.write_bytes(b"")
    assert expand_shards(str(shard)) == [shard]


def test_report_on_a_cut_short_or_foreign_results_file_is_one_line(tmp_path, capsys):
    from qclip.cli import main

    (tmp_path / "results.json").write_text('{"rows": [{"method"')
    assert main(["report", str(tmp_path)]) == 2
    assert "is not complete JSON" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"other": 1}')
    assert main(["report", str(tmp_path)]) == 2
    assert 'holds no "rows" list' in capsys.readouterr().err


def test_commands_never_write_into_a_users_folder(tmp_path, capsys):
    """A project folder that was never a qclip run (the user's weights, config.yaml, run.json, notes): pretrain
    --fresh, world and transfer refuse it before any work and every file is left as it was (pretrain --fresh
    deleted model/my_finetuned.bin; world and transfer replaced config.yaml and run.json). A folder qclip made is
    marked and used again; a config error leaves no folder behind."""
    from qclip.cli import main

    user = tmp_path / "project"
    (user / "model").mkdir(parents=True)
    files = {"model/my_finetuned.bin": "weights", "config.yaml": "lr: 1\n", "run.json": '{"mine": true}',
             "notes.md": "n"}
    for name, text in files.items():
        (user / name).write_text(text)
    for argv in (["pretrain", "--fresh", "--data", str(tmp_path), "--out", str(user)],
                 ["world", "--out", str(user), "--n", "4"],
                 ["transfer", "--encoder", "random:qclip-vit-tiny", "--data", str(tmp_path), "--out", str(user)]):
        assert main(argv) == 2
        assert "holds files qclip did not write" in capsys.readouterr().err
    assert {n: (user / n).read_text() for n in files} == files and not (user / ".qclip").exists()
    assert main(["world", "--out", str(tmp_path / "new"), "seed=-1"]) == 2
    assert not (tmp_path / "new").exists()  # nothing made for a config error


def test_a_folder_qclip_made_is_marked_and_used_again(tmp_path):
    from qclip.provenance import OWNER_MARKER, check_output_folder, claim_output_folder, written_by_qclip

    out = claim_output_folder(tmp_path / "run", "world")
    assert (out / OWNER_MARKER).is_file() and written_by_qclip(out)
    (out / "partial.tar").write_text("x")
    check_output_folder(out)  # qclip's: fine
    legacy = tmp_path / "old-run"  # made before the marker: its run.json is qclip's format
    legacy.mkdir()
    (legacy / "run.json").write_text('{"stage": "world", "versions": {}, "git_commit": null, "hardware": {}}')
    check_output_folder(legacy)


def test_one_writer_per_output_folder_named_and_released_with_its_process(tmp_path):
    """A second qclip command on a folder another one is writing fails at once, naming the holder (host, pid,
    command); the lock goes with the process (a killed holder leaves nothing stale)."""
    import subprocess
    import sys

    from qclip.data.shards import OutputFolderError
    from qclip.provenance import claim_output_folder, hold_output_folder

    out = claim_output_folder(tmp_path / "run", "pretrain")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom qclip.provenance import "
                               "hold_output_folder\nhold_output_folder(sys.argv[1], 'pretrain')\nprint('held', "
                               "flush=True)\ntime.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputFolderError, match=rf"being written by qclip pretrain \(host .*, pid {holder.pid}"):
            hold_output_folder(out, "run")
    finally:
        holder.kill()
        holder.wait()
    hold_output_folder(out, "run")  # the holder is gone: its lock with it
