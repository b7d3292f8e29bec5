"""`qclip eval`: zero-shot classification (world labels, ImageFolder) checked against a direct computation."""
import json

import numpy as np
import torch
import torch.nn.functional as F

from qclip.cli import main
from qclip.evaluate.zeroshot import labelled_images, world_label, zero_shot_classification
from qclip.models import create_clip
from qclip.models.checkpoint import save_model_dir


def test_world_label_is_the_largest_shape():
    seg = np.zeros((8, 8), np.int64)
    seg[:2] = 1  # wall
    seg[2:4, :3] = 2  # cube: 6 px
    seg[4:, :2] = 4  # cylinder: 8 px
    assert world_label(seg) == 2  # SHAPES[2] = cylinder
    assert world_label(np.zeros((4, 4), np.int64)) is None


def test_zero_shot_matches_direct_computation(world_dir, tmp_path, capsys):
    torch.manual_seed(0)
    b = create_clip("qclip-vit-tiny")
    save_model_dir(b.model, b.model_cfg, b.preprocess_cfg, tmp_path / "m")
    z = zero_shot_classification(b, world_dir / "val", templates="simple")
    classes, images, labels = labelled_images(world_dir / "val")
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    with torch.no_grad():
        b.model.eval()
        w = []
        for c in classes:
            t = F.normalize(b.model.encode_text(b.tokenizer([f(c) for f in SIMPLE_IMAGENET_TEMPLATES])), dim=-1)
            w.append(F.normalize(t.mean(0), dim=-1))
        img = F.normalize(b.model.encode_image(torch.stack([b.preprocess_val(i) for i in images])), dim=-1)
        pred = (img @ torch.stack(w).T).argmax(1)
    assert z["n"] == len(labels) and z["classes"] == ["cube", "sphere", "cylinder", "cone"]
    assert z["top1"] == float((pred == torch.tensor(labels)).float().mean())

    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(world_dir / "val"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot classification of" in printed and "retrieval over" in printed
    r = json.loads(out.read_text())
    assert set(r) >= {"retrieval", "zeroshot"} and 0 <= r["zeroshot"]["top1"] <= 1


def test_zero_shot_image_folder_skips_bad_files(world_dir, tmp_path):
    from qclip.data.shards import ShardReader

    for i, s in enumerate(ShardReader(world_dir / "val")):
        d = tmp_path / "folder" / ("red_thing" if i % 2 else "blue_thing")
        d.mkdir(parents=True, exist_ok=True)
        s.pil().save(d / f"{i}.png")
    (tmp_path / "folder" / "red_thing" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    torch.manual_seed(0)
    z = zero_shot_classification(create_clip("qclip-vit-tiny"), tmp_path / "folder", templates="simple")
    assert z["classes"] == ["blue thing", "red thing"] and z["n"] == 8 and sum(z["skipped"].values()) == 1
