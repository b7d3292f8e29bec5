import json
import os

import numpy as np
import pytest

from qclip.data.images import encode_png
from qclip.data.sample import Sample, safe_key
from qclip.data.shards import ShardIntegrityError, ShardReader, ShardWriter, file_sha256


def make(i: int, dense: bool = True) -> Sample:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)
    return Sample(
        key=f"s{i:03d}", image=encode_png(img), image_ext="png",
        meta={"captions": {"raw": [f"raw {i}"], "reference": [], "synthetic": {"coca": [f"syn {i}", "two"]}},
              "scores": {"clip": {"raw": [0.1]}}, "source": "test", "width": 20, "height": 16},
        seg=rng.integers(0, 300, (16, 20)) if dense else None,
        depth=rng.random((16, 20)).astype(np.float32) * 10 if dense else None,
        extra={"teacher.npy": b"\x00\x01"},
    )


def write(root, n=7, shard_size=3):
    with ShardWriter(root, prefix="t", shard_size=shard_size) as w:
        for i in range(n):
            w.write(make(i))
        return w.close({"name": "t"})


def test_round_trip_and_manifest(tmp_path):
    m = write(tmp_path / "ds")
    assert m["num_samples"] == 7 and [s["num_samples"] for s in m["shards"]] == [3, 3, 1]
    for s in m["shards"]:
        assert s["sha256"] == file_sha256(tmp_path / "ds" / s["path"])
    assert not (tmp_path / "ds.partial").exists()
    r = ShardReader(tmp_path / "ds")
    assert len(r) == 7 and r.verify() == 7
    got = list(r)
    for i, s in enumerate(got):
        ref = make(i)
        assert s.key == ref.key and s.image == ref.image
        assert s.captions == ref.meta["captions"] and s.meta["scores"] == ref.meta["scores"]
        assert s.seg.dtype == np.uint16 and np.array_equal(s.seg, ref.seg)  # >255 classes -> 16-bit PNG
        np.testing.assert_array_equal(s.depth, ref.depth)
        assert s.extra == {"teacher.npy": b"\x00\x01"}
        assert s.default_caption() == f"raw {i}"


def test_txt_member_is_default_caption(tmp_path):
    import tarfile

    write(tmp_path / "ds", n=2)
    with tarfile.open(tmp_path / "ds" / "shards" / "t-000000.tar") as tf:
        names = tf.getnames()
        assert "s000.txt" in names and "s000.json" in names and "s000.png" in names
        assert tf.extractfile("s000.txt").read() == b"raw 0"
        assert json.loads(tf.extractfile("s000.json").read())["key"] == "s000"


def test_same_samples_give_identical_bytes(tmp_path):
    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_truncated_or_modified_shard_is_reported(tmp_path):
    write(tmp_path / "ds")
    shard = tmp_path / "ds" / "shards" / "t-000001.tar"
    data = shard.read_bytes()
    # drop the last sample's members but keep a valid tar: rewrite with 2 of 3 samples
    import io
    import tarfile

    src = tarfile.open(fileobj=io.BytesIO(data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as dst:
        for m in src.getmembers():
            if not m.name.startswith("s005"):
                dst.addfile(m, src.extractfile(m))
    shard.write_bytes(buf.getvalue())
    r = ShardReader(tmp_path / "ds")
    with pytest.raises(ShardIntegrityError, match="sha256"):
        r.verify()
    with pytest.raises(ShardIntegrityError, match=r"holds 2 samples but manifest.json says 3"):
        r.verify(check_hashes=False)
    with pytest.raises(ShardIntegrityError, match="holds 2 samples"):
        list(r)
    shard.write_bytes(data[: len(data) // 2])  # cut mid-member
    with pytest.raises(ShardIntegrityError, match="t-000001.tar"):
        ShardReader(tmp_path / "ds").verify(check_hashes=False)
    shard.unlink()
    with pytest.raises(ShardIntegrityError, match="missing: shards/t-000001.tar"):
        ShardReader(tmp_path / "ds")


def test_failed_write_leaves_nothing_and_keeps_previous(tmp_path):
    write(tmp_path / "ds", n=4)
    before = ShardReader(tmp_path / "ds").manifest
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "ds", prefix="t", shard_size=2) as w:
            for i in range(5):
                w.write(make(i + 100))
            raise RuntimeError("disk full")
    assert not (tmp_path / "ds.partial").exists()
    assert ShardReader(tmp_path / "ds").manifest == before  # previous dataset untouched and readable
    assert ShardReader(tmp_path / "ds").verify() == 4
    with pytest.raises(ShardIntegrityError, match="manifest.json is missing"):
        ShardReader(tmp_path / "nothing")


def test_resume_keeps_finished_shards(tmp_path):
    root = tmp_path / "ds"
    w = ShardWriter(root, prefix="t", shard_size=2, resume=True)
    w.write_shard(0, [make(0), make(1)])
    mtime = os.stat(w.shard_path(0)).st_mtime_ns
    (w.staging / "shards" / ".t-000001.tar.x.tmp").write_bytes(b"half")  # a killed writer's temp file
    w.release()  # the killed process's lock goes with it
    w2 = ShardWriter(root, prefix="t", shard_size=2, resume=True)
    assert w2.done_shards() == {0}
    assert not list((w2.staging / "shards").glob("*.tmp"))
    w2.write_shard(1, [make(2)])
    m = w2.close()
    assert m["num_samples"] == 3 and os.stat(root / "shards" / "t-000000.tar").st_mtime_ns == mtime


def test_safe_key():
    assert safe_key("a/b.c d") == "a_b_c_d"
    assert "." not in safe_key("../../etc/passwd") and "/" not in safe_key("../../etc/passwd")


def test_manifest_shard_paths_stay_inside_the_dataset(tmp_path):
    """A third-party manifest listing `../../victim.tar`, or without "shards" (another tool's schema): refused
    by ShardReader, so no command reads or writes outside the dataset (caption run wrote there before)."""
    root = tmp_path / "ds"
    write(root)
    m = json.loads((root / "manifest.json").read_text())
    for bad in ("../../victim.tar", "/etc/victim.tar", "a/../../victim.tar"):
        m2 = {**m, "shards": [{**m["shards"][0], "path": bad}]}
        (root / "manifest.json").write_text(json.dumps(m2))
        with pytest.raises(ShardIntegrityError, match="leaves the dataset folder"):
            ShardReader(root)
    (root / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "shards"}))
    with pytest.raises(ShardIntegrityError, match='no "shards" list'):
        ShardReader(root)


@pytest.mark.parametrize("meta,where", [({"captions": {"raw": "a red circle"}}, "captions.raw"),
                                        ({"captions": {"synthetic": {"tiny": "x"}}}, "captions.synthetic"),
                                        ({"captions": {"raw": ["ok", 7]}}, "captions.raw"),
                                        ({"scores": {"s": {"raw": ["high"]}}}, "scores")])
def test_sample_json_is_checked_against_the_schema_on_read(tmp_path, meta, where):
    """A hand-made dataset whose captions.raw is a string trained on captions one character at a time; now the
    read names the shard, the sample and the key."""
    s = make(0)
    s.meta = meta
    with ShardWriter(tmp_path / "ds", prefix="t", shard_size=4) as w:
        w.write(s)
        w.close({"name": "t"})
    with pytest.raises(ShardIntegrityError, match=f"KEY.json {where} must be"):
        list(ShardReader(tmp_path / "ds"))
