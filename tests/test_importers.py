import json

import numpy as np
import pandas as pd
import pytest
from conftest import jpg_bytes, png_bytes

from qclip.cli import main
from qclip.config import IngestConfig
from qclip.data import importers as im
from qclip.data.images import BadImage, open_image
from qclip.data.shards import ShardReader
from qclip.data.skips import TooManyBadSamples


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """A tar of (name, bytes) members, as img2dataset writes its shards."""
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


@pytest.fixture
def image_folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(10):
        (d / f"ok{i}.png").write_bytes(png_bytes(seed=i))
    (d / "ok.jpg").write_bytes(jpg_bytes())
    (d / "cmyk.jpg").write_bytes(jpg_bytes(mode="CMYK"))
    (d / "gray16.png").write_bytes(png_bytes(mode="I;16"))
    good = jpg_bytes(64, 64)
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "tiny.png").write_bytes(png_bytes(1, 1))
    (d / "text.png").write_bytes(b"this is not an image")
    return d


def test_open_image_reasons():
    with pytest.raises(BadImage, match="empty file"):
        open_image(b"")
    good = jpg_bytes(64, 64)
    with pytest.raises(BadImage) as e:
        open_image(good[: len(good) // 2])
    assert e.value.reason == "unreadable image"
    with pytest.raises(BadImage, match="too small"):
        open_image(png_bytes(1, 1))
    with pytest.raises(BadImage, match="decompression-bomb"):
        open_image(png_bytes(40, 40), max_pixels=1000)
    assert open_image(jpg_bytes(mode="CMYK")).mode == "RGB"
    img = open_image(png_bytes(mode="I;16"))
    assert img.mode == "RGB" and np.asarray(img).max() > 200  # scaled, not clipped to white/black


def test_csv_skips_and_counts(tmp_path, image_folder):
    rows = [f"ok{i}.png,\"a photo number {i}\"" for i in range(10)]
    rows += ["ok.jpg,a jpeg", "cmyk.jpg,a cmyk jpeg", "gray16.png,sixteen bit", "truncated.jpg,cut",
             "zero.png,zero bytes", "tiny.png,one pixel", "text.png,not an image", "missing.png,gone",
             "ok1.png,", "../outside.png,escape"]
    data = ("path,caption\n" + "\n".join(rows) + "\n").encode() + b"ok2.png,caf\xe9 latin-1\n"
    (tmp_path / "t.csv").write_bytes(data)
    cands, n = im.table_candidates(image_folder, tmp_path / "t.csv")
    out = tmp_path / "ds"
    summary = im.ingest(cands, out, IngestConfig(max_bad_fraction=0.5), "test", total=n, progress=False)
    assert summary["seen"] == 21 and summary["kept"] == 13
    assert summary["skipped"] == {"unreadable image": 2, "empty file": 1, "image too small": 1, "missing file": 1,
                                  "empty caption": 1, "path outside image folder": 1, "non-UTF-8 caption": 1}
    assert summary["line"].startswith("ingested 13 of 21; skipped: 2 unreadable image, ")
    r = ShardReader(out)
    assert r.verify() == 13 and r.manifest["skipped"] == summary["skipped"]
    samples = list(r)
    caps = [s.captions["raw"] for s in samples]
    assert ["a photo number 0"] in caps and ["a cmyk jpeg"] in caps
    by_cap = {s.captions["raw"][0]: s for s in samples}
    assert by_cap["a jpeg"].image_ext == "jpg" and by_cap["a jpeg"].image == (image_folder / "ok.jpg").read_bytes()
    assert by_cap["a cmyk jpeg"].image_ext == "png" and by_cap["a cmyk jpeg"].pil().mode == "RGB"
    assert by_cap["sixteen bit"].meta["source_path"] == "gray16.png"
    assert all(s.meta["width"] == 32 and s.meta["height"] == 24 for s in samples)


def test_bad_fraction_fails_and_leaves_no_dataset(tmp_path, image_folder):
    (tmp_path / "t.csv").write_text("path,caption\nok0.png,fine\nzero.png,bad\ntext.png,bad\n")
    cands, n = im.table_candidates(image_folder, tmp_path / "t.csv")
    with pytest.raises(TooManyBadSamples) as e:
        im.ingest(cands, tmp_path / "ds", IngestConfig(), "test", total=n, progress=False)
    msg = str(e.value)
    assert "2 of 3" in msg and "zero.png" in msg and "max_bad_fraction" in msg
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.partial").exists()


def test_jsonl_with_caption_lists_and_bad_rows(tmp_path, image_folder):
    lines = [json.dumps({"file": f"ok{i}.png", "text": [f"first {i}", f"second {i}"], "w": 3}) for i in range(5)]
    lines += ["{not json", json.dumps({"file": "ok5.png", "text": "   "})]
    (tmp_path / "t.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    cands, n = im.table_candidates(image_folder, tmp_path / "t.jsonl", "file", "text")
    s = im.ingest(cands, tmp_path / "ds", IngestConfig(max_bad_fraction=0.5), "jsonl", progress=False)
    assert s["kept"] == 5 and s["skipped"] == {"malformed row": 1, "empty caption": 1, "non-UTF-8 row": 1}
    first = next(iter(ShardReader(tmp_path / "ds")))
    assert first.captions["raw"] == ["first 0", "second 0"] and first.meta["extra"] == {"w": 3}
    with pytest.raises(im.IngestError, match="no column 'path'"):
        im.table_candidates(image_folder, tmp_path / "t.jsonl")


def test_parquet(tmp_path, image_folder):
    pd.DataFrame({"image": [f"ok{i}.png" for i in range(4)], "caption": [f"c{i}" for i in range(4)]}) \
        .to_parquet(tmp_path / "t.parquet")
    cands, n = im.table_candidates(image_folder, tmp_path / "t.parquet", "image")
    s = im.ingest(cands, tmp_path / "ds", IngestConfig(), "pq", total=n, progress=False)
    assert s["kept"] == 4 and [x.captions["raw"] for x in ShardReader(tmp_path / "ds")] == [["c0"], ["c1"], ["c2"], ["c3"]]


def test_coco_keeps_all_captions(tmp_path, image_folder):
    ann = {"images": [{"id": 1, "file_name": "ok0.png"}, {"id": 2, "file_name": "ok1.png"},
                      {"id": 3, "file_name": "ok2.png"}],
           "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"},
                           {"image_id": 2, "caption": "c"}, {"image_id": 1, "caption": "d"}]}
    (tmp_path / "cap.json").write_text(json.dumps(ann))
    cands, n = im.coco_candidates(image_folder, tmp_path / "cap.json")
    s = im.ingest(cands, tmp_path / "ds", IngestConfig(max_bad_fraction=0.5), "coco", progress=False)
    assert s["kept"] == 2 and s["skipped"] == {"empty caption": 1}
    got = {x.meta["coco_id"]: x.captions["raw"] for x in ShardReader(tmp_path / "ds")}
    assert got == {1: ["a", "b", "d"], 2: ["c"]}


def test_img2dataset_shards_with_unsafe_member(tmp_path):
    shard_dir = tmp_path / "i2d"
    members = []
    for i in range(6):
        members += [(f"{i:09d}.jpg", jpg_bytes(seed=i)), (f"{i:09d}.txt", f"caption {i}".encode()),
                    (f"{i:09d}.json", json.dumps({"url": f"http://x/{i}.jpg", "caption": f"caption {i}"}).encode())]
    members += [("../evil.jpg", jpg_bytes()), ("../evil.txt", b"escape"), ("000000099.txt", b"no image")]
    write_tar(shard_dir / "00000.tar", members)
    out = tmp_path / "ds"
    rc = main(["ingest", "img2dataset", "--shards", str(shard_dir), "--out", str(out), "--quiet",
               "ingest.max_bad_fraction=0.5"])
    assert rc == 0
    r = ShardReader(out)
    assert len(r) == 6
    assert r.manifest["skipped"] == {"unsafe member name": 2, "missing image": 1}
    s = next(iter(r))
    assert s.captions["raw"] == ["caption 0"] and s.meta["img2dataset"]["url"] == "http://x/0.jpg"
    assert not (tmp_path / "evil.jpg").exists()
    assert (out / "run.json").is_file() and (out / "config.yaml").is_file()


def test_cli_ingest_table_and_errors(tmp_path, image_folder, capsys):
    (tmp_path / "t.csv").write_text("p,c\n" + "".join(f"ok{i}.png,cap {i}\n" for i in range(10)) + "zero.png,z\n")
    out = tmp_path / "ds"
    argv = ["ingest", "table", "--images", str(image_folder), "--table", str(tmp_path / "t.csv"),
            "--path-column", "p", "--caption-column", "c", "--out", str(out), "--quiet", "ingest.max_bad_fraction=0.2"]
    assert main(argv) == 0
    assert "ingested 10 of 11; skipped: 1 empty file" in capsys.readouterr().out
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv[:-1] + ["--overwrite"]) == 2  # default 5% bad fraction: 1 of 11 is too many
    err = capsys.readouterr().err
    assert "1 of 11" in err and "zero.png" in err
    assert ShardReader(out).verify() == 10  # the failed re-run left the earlier dataset intact
    assert main(["ingest", "table", "--images", str(tmp_path / "nope"), "--table", "x.csv", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_table_and_coco_never_read_outside_the_image_folder(tmp_path, image_folder):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(seed=99))
    (image_folder / "link.png").symlink_to(secret)  # a symlink inside the folder pointing out of it
    (tmp_path / "t.csv").write_text(f"path,caption\nok0.png,fine\n{secret},absolute\nlink.png,symlink\n"
                                    f"{image_folder / 'ok1.png'},absolute but inside\n")
    cands, _ = im.table_candidates(image_folder, tmp_path / "t.csv")
    assert [c.bad for c in cands] == [None, "path outside image folder", "path outside image folder", None]
    coco = {"images": [{"id": 1, "file_name": str(secret)}, {"id": 2, "file_name": "link.png"},
                       {"id": 3, "file_name": "ok2.png"}], "annotations": []}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    cands, _ = im.coco_candidates(image_folder, tmp_path / "c.json")
    assert [c.bad for c in cands] == ["path outside image folder", "path outside image folder", None]


def test_malformed_rows_and_files_are_skipped_or_one_clean_error(tmp_path, image_folder):
    import csv

    big = "x" * (csv.field_size_limit() + 10)
    (tmp_path / "t.csv").write_bytes(("\ufeffpath,caption\nok0.png,fine\n" + f"ok1.png,{big}\n" + "ok2.png,also fine\n"
                                      + "ok\0.png,nul\n").encode())
    cands, _ = im.table_candidates(image_folder, tmp_path / "t.csv")  # the BOM is not part of 'path'
    assert [c.bad for c in cands] == [None, "malformed row", None, "malformed path"]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(im.IngestError, match="not a readable Parquet file"):
        im.table_candidates(image_folder, tmp_path / "bad.parquet")
    (tmp_path / "c.json").write_text(json.dumps({"images": {"id": 1}, "annotations": []}))
    with pytest.raises(im.IngestError, match="'images' and 'annotations' lists"):
        im.coco_candidates(image_folder, tmp_path / "c.json")


def test_non_text_captions_and_orphan_coco_captions_are_counted(tmp_path, image_folder):
    assert im.clean_caption(1984, 100) == ("1984", None)
    assert im.clean_caption({"a": 1}, 100) == (None, "caption is not text")
    assert im.clean_caption(["a"], 100) == (None, "caption is not text")
    coco = {"images": [{"id": 1, "file_name": "ok0.png"}],
            "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 7, "caption": "orphan"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    cands, _ = im.coco_candidates(image_folder, tmp_path / "c.json")
    assert sorted(str(c.bad) for c in cands) == ["None", "caption of an absent image"]


def _hf_dataset(path, n_good: int = 20):
    """A Hugging Face dataset built locally (no hub): good rows, a corrupt image, an empty caption, a list caption."""
    import datasets

    images = [png_bytes(seed=i) for i in range(n_good)] + [b"not an image", png_bytes(seed=99), png_bytes(seed=98)]
    captions = [f"picture {i}" for i in range(n_good)] + ["broken", "", ["first", "second"]]
    ds = datasets.Dataset.from_dict({"img": [{"bytes": b, "path": None} for b in images],
                                     "text": [c if isinstance(c, list) else [c] for c in captions]},
                                    features=datasets.Features({"img": datasets.Image(),
                                                                "text": datasets.Sequence(datasets.Value("string"))}))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    return path


def test_hf_datasets_importer_skips_and_counts(tmp_path, capsys):
    pytest.importorskip("datasets")
    src = _hf_dataset(tmp_path / "hf")
    out = tmp_path / "out"
    rc = main(["ingest", "hf", "--dataset", str(src), "--image-column", "img", "--caption-column", "text",
               "--out", str(out), "--quiet", "ingest.max_bad_fraction=0.2"])
    assert rc == 0
    assert "ingested 21 of 23" in capsys.readouterr().out
    samples = list(ShardReader(out))
    assert len(samples) == 21 and samples[0].meta["captions"]["raw"] == ["picture 0"]
    assert samples[-1].meta["captions"]["raw"] == ["first", "second"]  # a list cell keeps every caption
    assert samples[0].meta["source"].startswith("hf:") and samples[0].meta["hf_index"] == 0
    # a wrong column or split names what there is
    assert main(["ingest", "hf", "--dataset", str(src), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "no column 'image'" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["ingest", "hf", "--dataset", str(src), "--split", "val", "--image-column", "img",
                 "--caption-column", "text", "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "no split 'val' (splits: train)" in capsys.readouterr().err


def test_img2dataset_sample_with_a_duplicate_member_costs_that_sample_only(tmp_path, capsys):
    """A second `KEY.txt` in one sample (a re-run downloader appends): that sample is skipped and counted, every
    other sample of the shard is ingested, and the counts are of the input (was: the rest of the tar dropped,
    "ingested 63 of 64; skipped: 1 unreadable shard" for 100 samples)."""
    shard_dir = tmp_path / "i2d"
    members = []
    for i in range(20):
        members += [(f"{i:05d}.jpg", jpg_bytes(seed=i)), (f"{i:05d}.txt", f"caption {i}".encode())]
        if i == 7:
            members.append((f"{i:05d}.txt", b"appended again"))
    write_tar(shard_dir / "00000.tar", members)
    out = tmp_path / "ds"
    assert main(["ingest", "img2dataset", "--shards", str(shard_dir), "--out", str(out), "--quiet",
                 "ingest.max_bad_fraction=0.1"]) == 0
    r = ShardReader(out)
    assert len(r) == 19 and r.manifest["skipped"] == {"duplicate member": 1}
    assert "ingested 19 of 20" in capsys.readouterr().out


def test_img2dataset_key_json_that_is_not_an_object_is_counted_and_ignored(tmp_path):
    """Another tool's KEY.json (a JSON list): the sample is ingested with its KEY.txt caption, the JSON read as no
    metadata (was AttributeError: 'list' object has no attribute 'get')."""
    shard_dir = tmp_path / "i2d"
    members = []
    for i in range(4):
        members += [(f"{i:05d}.jpg", jpg_bytes(seed=i)), (f"{i:05d}.txt", f"caption {i}".encode()),
                    (f"{i:05d}.json", b"[1, 2]" if i == 2 else json.dumps({"url": f"u{i}"}).encode())]
    write_tar(shard_dir / "00000.tar", members)
    out = tmp_path / "ds"
    assert main(["ingest", "img2dataset", "--shards", str(shard_dir), "--out", str(out), "--quiet"]) == 0
    r = ShardReader(out)
    assert len(r) == 4 and [s.captions["raw"] for s in r][2] == ["caption 2"]
    assert not r.manifest.get("skipped")
