"""Failed writes keep the previous checkpoint / manifest; config errors stop a command before any work."""
from __future__ import annotations

import errno
import json

import pytest
import torch

from qclip import atomic
from qclip.cli import main
from qclip.data.sample import Sample
from qclip.data.shards import ShardReader, ShardWriter
from qclip.optim import load_checkpoint, save_checkpoint


def _model():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return m, opt, sched


@pytest.mark.parametrize("failing_write", [1, 2, 3])  # weights, optimizer state, latest.json
def test_checkpoint_write_failing_midway_keeps_the_previous(tmp_path, monkeypatch, failing_write):
    m, opt, sched = _model()
    save_checkpoint(tmp_path, m, opt, sched, step=2)
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    calls = {"n": 0}
    real_fsync = atomic.os.fsync

    def full_disk(fd):
        calls["n"] += 1
        if calls["n"] == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, m, opt, sched, step=4)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert not list(tmp_path.glob(".*.tmp")), "a temp file was left behind"
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 2
    m2, opt2, sched2 = _model()
    with torch.no_grad():
        m2.weight.zero_()
    assert load_checkpoint(tmp_path, m2, opt2, sched2) == 2
    assert all(torch.equal(saved[k], v) for k, v in m2.state_dict().items())


def test_shard_write_failing_midway_keeps_the_previous_dataset(tmp_path, monkeypatch):
    from conftest import png_bytes

    def samples(tag):
        return [Sample(key=f"{tag}{i}", image=png_bytes(seed=i), image_ext="png",
                       meta={"captions": {"raw": [f"{tag} {i}"]}}) for i in range(6)]

    with ShardWriter(tmp_path / "ds", shard_size=4) as w:
        for s in samples("old"):
            w.write(s)
        w.close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the manifest is the last write: fail it, after the new shards are complete in the staging area
    monkeypatch.setattr("qclip.data.shards.atomic_write_json", boom)
    with pytest.raises(OSError):
        with ShardWriter(tmp_path / "ds", shard_size=4) as w:
            for s in samples("new"):
                w.write(s)
            w.close()
    after = {p.name: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    assert after == before
    assert [s.key for s in ShardReader(tmp_path / "ds")] == [f"old{i}" for i in range(6)]


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "nowhere"),
    (["pretrain", "--data", "{world}/pool", "--out", "{tmp}/o", "pretrain.steps=abc"], "pretrain.steps"),
    (["pretrain", "--data", "{world}/pool", "--out", "{tmp}/o", "pretrain.stepz=3"], "pretrain.steps"),
    (["pretrain", "--data", "{world}/pool", "--out", "{tmp}/o", "pretrain.model=ViT-Q-99"], "ViT-Q-99"),
    (["transfer", "--encoder", "random:qclip-vit-tiny", "--data", "{world}", "--out", "{tmp}/o",
      "transfer.data_fractions=[0.0,1.0]"], "(0, 1]"),
    (["transfer", "--encoder", "random:qclip-vit-tiny", "--data", "{world}", "--out", "{tmp}/o",
      "transfer.data_fractions=[1.5]"], "(0, 1]"),
    (["transfer", "--encoder", "timm:no_such_net", "--data", "{world}", "--out", "{tmp}/o"], "no_such_net"),
    (["transfer", "--encoder", "random:qclip-vit-tiny", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "nowhere"),
    (["caption", "run", "--data", "{world}/pool", "--out", "{tmp}/o", "--captioner", "{tmp}/no_model"], "no_model"),
    (["run", "--out", "{tmp}/o", "study.methods=[clip-raw,dino]"], "dino"),
    (["run", "--out", "{tmp}/o", "world.n_pool=-3"], "world split sizes"),
])
def test_config_errors_stop_before_any_work(world_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, world=world_dir) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "error:" in err, err
    assert not (tmp_path / "o").exists(), "work started before the error"


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_output_disk_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys, err):
    """A read-only, forbidden or full output disk: `qclip CMD: error: cannot write PATH ...`, exit 2, no traceback
    (simulated: this machine runs tests as root, which a chmod does not stop)."""
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *a, **k):
        if str(self).startswith(str(tmp_path / "out")):
            raise OSError(err, errno.errorcode[err], str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    assert main(["world", "--out", str(tmp_path / "out"), "--n", "8", "world.n_curated=8", "world.n_dense=8",
                 "world.n_dev=8", "world.n_val=8", "--quiet"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and "error: cannot write" in err_text and str(tmp_path / "out") in err_text


def test_a_full_disk_while_writing_a_shard_leaves_no_late_error_and_no_lock(tmp_path, monkeypatch):
    """ENOSPC in the middle of a shard: one error, no "Exception ignored in _Stream.__del__ ... write to closed
    file" printed later, and `qclip world` leaves no `.SPLIT.lock` beside its splits."""
    import gc
    import sys

    from qclip.data import world_shards
    from qclip.data.sample import Sample
    from qclip.data.shards import write_shard_file

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    real = Sample.to_members
    calls = []

    def full(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Sample, "to_members", full)
    from test_shards import make

    with pytest.raises(OSError):
        write_shard_file(tmp_path / "s.tar", [make(i) for i in range(3)])
    gc.collect()
    assert not unraisable and not list(tmp_path.iterdir())
    calls.clear()
    from conftest import tiny_config

    with pytest.raises(OSError):
        world_shards.build_world(tiny_config(**{"workers": 1}), tmp_path / "w", progress=False)
    gc.collect()
    assert not unraisable and [p.name for p in (tmp_path / "w").glob(".*.lock")] == [".qclip.lock"]  # its own
