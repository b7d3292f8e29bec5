"""A corpus of broken inputs through ingest, caption, pretrain and transfer: each bad item is skipped or
rejected with a named reason and counted; nothing crashes; nothing is written outside the output folders."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from conftest import jpg_bytes, png_bytes
from PIL import Image

from qclip.cli import main
from qclip.data.sample import Sample
from qclip.data.shards import ShardReader, ShardWriter


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, int]:
    """Every file under root (size), except inside the `skip` folders."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not any(s in p.parents for s in skip)}


def _bomb_png(side: int = 20000) -> bytes:
    buf = io.BytesIO()  # 400 M pixels declared, a few hundred kB on disk: decoding it would need 1.2 GB
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def _corpus(root: Path) -> Path:
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    rows = []
    for i in range(24):
        (imgs / f"ok{i}.png").write_bytes(png_bytes(64, 64, seed=i))
        rows.append(f"ok{i}.png,a picture number {i}")
    good_jpg, good_png = jpg_bytes(64, 64), png_bytes(64, 64, seed=99)
    broken = {"trunc.jpg": good_jpg[: len(good_jpg) // 2], "trunc.png": good_png[: len(good_png) // 3],
              "zero.png": b"", "one.png": png_bytes(1, 1), "bomb.png": _bomb_png(),
              "cmyk.jpg": jpg_bytes(64, 64, mode="CMYK"), "gray16.png": png_bytes(64, 64, mode="I;16")}
    for name, data in broken.items():
        (imgs / name).write_bytes(data)
        rows.append(f"{name},{name} caption")
    rows += ["ok0.png," + "long " * 20_000, "ok1.png,", "../outside.png,escape", "../../etc/passwd,escape"]
    table = root / "table.csv"
    table.write_bytes(("path,caption\n" + "\n".join(rows) + "\n").encode() + b"ok2.png,caf\xe9 latin-1\n")
    return table


def test_bad_corpus_through_ingest_caption_pretrain(tmp_path, coca_dir, capsys):
    table = _corpus(tmp_path / "in")
    out = tmp_path / "out"
    before = _tree(tmp_path, (out,))
    ds = out / "ds"
    assert main(["ingest", "table", "--images", str(tmp_path / "in" / "imgs"), "--table", str(table),
                 "--out", str(ds), "--quiet", "ingest.max_bad_fraction=0.5", "ingest.shard_size=8"]) == 0
    manifest = ShardReader(ds).manifest
    assert manifest["skipped"] == {"unreadable image": 2, "empty file": 1, "image too small": 1,
                                   "image too large": 1, "caption too long": 1, "empty caption": 1,
                                   "path outside image folder": 2, "non-UTF-8 caption": 1}
    line = capsys.readouterr().out
    assert "ingested 26 of 36" in line and "image too large" in line
    kept = {s.meta["source_path"] for s in ShardReader(ds)}
    assert {"cmyk.jpg", "gray16.png"} <= kept  # odd but valid modes are converted, not dropped

    # a third-party dataset (not ingested by qclip) with undecodable images inside its shards
    foreign = out / "foreign"
    with ShardWriter(foreign, shard_size=8) as w:
        for s in ShardReader(ds):
            w.write(s)
        w.write(Sample(key="cut", image=jpg_bytes(64, 64)[:300], image_ext="jpg", meta={"captions": {"raw": ["cut"]}}))
        w.write(Sample(key="nothing", image=b"", image_ext="png", meta={"captions": {"raw": ["empty"]}}))
        w.close()
    assert main(["caption", "run", "--data", str(foreign), "--out", str(out / "captioned"), "--captioner",
                 str(coca_dir), "--id", "tiny", "--num-beams", "1", "--max-len", "6", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "captioned (tiny) 26 of 28" in text and "unreadable image" in text and "empty file" in text, text
    have = {s.key: bool(s.captions.get("synthetic", {}).get("tiny")) for s in ShardReader(out / "captioned")}
    assert len(have) == 28 and sum(have.values()) == 26  # unreadable samples are kept, uncaptioned, not lost
    assert not have["cut"] and not have["nothing"]

    # pretraining on the clean dataset works; on the foreign one a broken image stops it with a named reason
    train = ["pretrain.batch_size=8", "pretrain.steps=2", "pretrain.warmup_steps=1", "pretrain.workers=0",
             "pretrain.caption_policy=raw"]
    assert main(["pretrain", "--data", str(ds), "--out", str(out / "run"), "--quiet", *train]) == 0
    rc = main(["pretrain", "--data", str(foreign), "--out", str(out / "run2"), "--quiet", *train,
               "pretrain.steps=4"])
    err = capsys.readouterr().err
    assert rc == 2 and ("cut" in err or "nothing" in err) and "verify" in err, err
    assert _tree(tmp_path, (out,)) == before, "files appeared or changed outside the output folder"


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, arr)
    else:
        Image.fromarray(arr).save(path)


def test_bad_dense_pairs_through_transfer(tmp_path, capsys):
    root = tmp_path / "dense"
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("val", 20)):
        for i in range(n):
            _save(root / split / "images" / f"{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            _save(root / split / "masks" / f"{i}.png", rng.integers(0, 4, (32, 32), dtype=np.uint8))
            d = rng.uniform(1, 5, (32, 32)).astype(np.float32)
            d[0, :4] = [np.nan, np.inf, -np.inf, -1.0]  # non-finite and negative depth: invalid pixels
            _save(root / split / "depth" / f"{i}.npy", d)
    _save(root / "train" / "masks" / "1.png", np.full((32, 32), 250, np.uint8))  # class id out of range
    _save(root / "train" / "masks" / "2.png", np.zeros((10, 12), np.uint8))  # wrong mask shape
    (root / "train" / "images" / "3.png").write_bytes(png_bytes(32, 32)[:100])  # truncated image
    before = _tree(tmp_path, (tmp_path / "t",))
    args = ["transfer", "--encoder", "random:qclip-vit-tiny", "--data", str(root), "--quiet",
            "transfer.steps=2", "transfer.batch_size=8", "transfer.image_size=32", "transfer.data_fractions=[1.0]",
            "transfer.decoder_width=8", "transfer.depth_bins=8", "transfer.num_classes=4"]
    assert main([*args, "--task", "segmentation", "--out", str(tmp_path / "t" / "seg")]) == 0
    seg = json.loads((tmp_path / "t" / "seg" / "metrics.json").read_text())
    assert seg["skipped"] == {"train": {"class id out of range": 1, "mask size mismatch": 1, "unreadable image": 1},
                              "val": {}}
    assert main([*args, "--task", "depth", "--out", str(tmp_path / "t" / "depth")]) == 0
    depth = json.loads((tmp_path / "t" / "depth" / "metrics.json").read_text())
    assert all(np.isfinite(v) for r in depth["results"] for v in r["metrics"].values() if isinstance(v, float))
    assert _tree(tmp_path, (tmp_path / "t",)) == before
