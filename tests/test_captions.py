"""Recaptioning (real open_clip CoCa generation with a tiny random CoCa), resume, bad input, quality measure."""
import json

import pytest
from conftest import TINY_COCA

from qclip.captions.captioners import Sampling, create_captioner
from qclip.captions.quality import caption_quality, dataset_quality, named_objects
from qclip.captions.recaption import recaption
from qclip.cli import main
from qclip.data.shards import ShardReader, ShardWriter

BEAM = Sampling(method="beam", num_beams=2, max_len=8, min_len=2)


def test_quality_measure_known_answers():
    scene = {"objects": [{"colour": "red", "shape": "cube", "visible": True},
                         {"colour": "blue", "shape": "sphere", "visible": True},
                         {"colour": "green", "shape": "cone", "visible": True},
                         {"colour": "pink", "shape": "cylinder", "visible": False}]}
    assert named_objects("A big red cube and a blue ball; red big blocks") == {("red", "cube"), ("blue", "sphere")}
    assert caption_quality("a big red cube and a blue ball", scene) == (pytest.approx(2 / 3), 0.0)
    assert caption_quality("yellow cone click to enlarge", scene) == (0.0, 1.0)
    assert caption_quality("pink cylinder and green cone", scene) == (pytest.approx(1 / 3), 0.0)  # hidden, not wrong
    assert caption_quality("", scene) == (0.0, None)


def test_world_quality_raw_vs_reference(world_dir, capsys):
    q = dataset_quality(world_dir / "val")
    assert q["reference"]["objects_named_correctly"] == 1.0 and q["reference"]["named_objects_wrong"] == 0.0
    assert q["raw"]["objects_named_correctly"] < 0.5
    assert main(["caption", "quality", "--data", str(world_dir / "val")]) == 0
    out = capsys.readouterr().out
    assert "objects named correctly" in out and "reference" in out and "100.0%" in out


def test_recaption_adds_captions_and_resumes(world_dir, coca_dir, tmp_path):
    cap = create_captioner(f"local-dir:{coca_dir}", captioner_id="tiny")
    ref = recaption(world_dir / "pool", tmp_path / "ref", cap, n=2, sampling=BEAM, batch_size=8, progress=False)
    assert ref["captioned_this_run"] == 48 and ref["skipped"] == {}
    out = {s.key: s for s in ShardReader(tmp_path / "ref")}
    src = {s.key: s for s in ShardReader(world_dir / "pool")}
    assert out.keys() == src.keys()
    for k, s in out.items():
        assert len(s.captions["synthetic"]["tiny"]) == 2
        assert s.captions["raw"] == src[k].captions["raw"]  # raw alt-text kept beside
    assert ShardReader(tmp_path / "ref").manifest["synthetic_captions"]["tiny"]["n"] == 2

    class Dies:
        id = "tiny"
        calls = 0
        model = cap.model  # the same captioner, killed half-way

        def caption(self, images, n, sampling):
            Dies.calls += 1
            if Dies.calls > 2:  # two batches = the first shard of 16
                raise KeyboardInterrupt
            return cap.caption(images, n, sampling)

    with pytest.raises(KeyboardInterrupt):
        recaption(world_dir / "pool", tmp_path / "run", Dies(), n=2, sampling=BEAM, batch_size=8, progress=False)
    again = recaption(world_dir / "pool", tmp_path / "run", cap, n=2, sampling=BEAM, batch_size=8, progress=False)
    assert again["resumed_shards"] == 1 and again["captioned_this_run"] == 32
    resumed = {s.key: s.captions["synthetic"]["tiny"] for s in ShardReader(tmp_path / "run")}
    assert resumed == {k: s.captions["synthetic"]["tiny"] for k, s in out.items()}  # same, no duplicates

    # a retrained captioner under the same id: the killed run's shards are not kept
    import copy

    import torch

    retrained = copy.deepcopy(cap)
    with torch.no_grad():
        next(retrained.model.parameters()).add_(0.5)
    Dies.calls = 0
    with pytest.raises(KeyboardInterrupt):
        recaption(world_dir / "pool", tmp_path / "run2", Dies(), n=2, sampling=BEAM, batch_size=8, progress=False)
    fresh = recaption(world_dir / "pool", tmp_path / "run2", retrained, n=2, sampling=BEAM, batch_size=8,
                      progress=False)
    assert fresh["resumed_shards"] == 0 and fresh["captioned_this_run"] == 48
    weights = ShardReader(tmp_path / "run2").manifest["synthetic_captions"]["tiny"]["weights_sha256"]
    assert len(weights) == 64 and weights != ShardReader(tmp_path / "ref").manifest["synthetic_captions"]["tiny"][
        "weights_sha256"]


def test_bad_image_skipped_and_empty_generation_recorded(world_dir, tmp_path):
    src = tmp_path / "src"
    with ShardWriter(src, shard_size=100) as w:
        for i, s in enumerate(ShardReader(world_dir / "pool")):
            if i == 3:
                s.image = s.image[: len(s.image) // 3]  # truncated
            w.write(s)
            if i == 9:
                break
        w.close()

    class EmptyForSome:
        id = "fake"

        def caption(self, images, n, sampling):
            return [["" if j % 2 else "a red cube"] * n for j in range(len(images))]

    s = recaption(src, tmp_path / "out", EmptyForSome(), n=1, batch_size=4, progress=False)
    assert s["skipped"] == {"unreadable image": 1} and s["captioned_this_run"] == 9
    assert "captioned (fake) 9 of 10; skipped: 1 unreadable image" == s["line"]
    got = list(ShardReader(tmp_path / "out"))
    assert len(got) == 10 and "fake" not in got[3].captions.get("synthetic", {})  # kept, not captioned
    texts = [g.captions["synthetic"]["fake"][0] for g in got if "fake" in g.captions["synthetic"]]
    assert "" in texts and "a red cube" in texts  # empty stays empty: never replaced by raw text


def test_cli_caption_run(world_dir, coca_dir, tmp_path, capsys):
    out = tmp_path / "cap"
    rc = main(["caption", "run", "--data", str(world_dir / "curated"), "--out", str(out), "--captioner",
               str(coca_dir), "--id", "tiny", "--n", "1", "--num-beams", "2", "--max-len", "8", "--quiet"])
    assert rc == 0
    assert "captioned (tiny) 16 of 16" in capsys.readouterr().out
    assert (out / "run.json").is_file() and len(ShardReader(out)) == 16

    # score every caption with a CLIP model (the tiny CoCa has both towers), then stats with plots
    scored, stats_dir = tmp_path / "scored", tmp_path / "stats"
    assert main(["caption", "score", "--data", str(out), "--out", str(scored), "--scorer", str(coca_dir),
                 "--id", "tinyclip", "--quiet"]) == 0
    assert "scored (tinyclip) 16 of 16" in capsys.readouterr().out
    assert ShardReader(scored).manifest["scorers"] == ["tinyclip"]
    from qclip.captions.score import clip_scores
    from qclip.models import create_clip

    bundle = create_clip(f"local-dir:{coca_dir}")
    s = next(iter(ShardReader(scored)))
    sc = s.meta["scores"]["tinyclip"]
    assert set(sc) == {"raw", "reference", "tiny"} and len(sc["reference"]) == len(s.captions["reference"])
    fresh = clip_scores(bundle, [s.pil()], [{"x": ["a photo", ""]}])[0]["x"]
    assert fresh[1] is None and -1 <= fresh[0] <= 1
    import torch
    import torch.nn.functional as F

    with torch.no_grad():  # the stored score is the cosine of the normalised embeddings
        img = F.normalize(bundle.model.encode_image(bundle.preprocess_val(s.pil())[None]), dim=-1)
        txt = F.normalize(bundle.model.encode_text(bundle.tokenizer([s.captions["reference"][0]])), dim=-1)
    assert sc["reference"][0] == pytest.approx((img * txt).sum().item(), abs=1e-4)

    assert main(["caption", "stats", "--data", str(scored), "--out", str(stats_dir)]) == 0
    printed = capsys.readouterr().out
    assert "raw" in printed and "reference" in printed and "tiny" in printed
    st = json.loads((stats_dir / "caption_stats.json").read_text())
    assert st["reference"]["captions"] == 16 * 5 and st["reference"]["mean_words"] > st["raw"]["mean_words"]
    assert st["tiny"]["scores"]["tinyclip"]["values"] and (stats_dir / "caption_stats.png").stat().st_size > 5000


def test_caption_train_then_caption(world_dir, tmp_path, capsys):
    out = tmp_path / "captioner"
    args = ["caption", "train", "--data", str(world_dir / "curated"), "--out", str(out), "--quiet",
            "captioner.steps=30", "captioner.batch_size=8", "captioner.warmup_steps=2", "captioner.workers=0",
            "captioner.width=64", "captioner.vision_layers=2", "captioner.checkpoint_every=15"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "caption train: 30 steps" in printed and "boxes of 4 classes" in printed
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [10, 20, 30]
    # the world's curated split carries boxes: the region head trained beside the captions
    summary = json.loads((out / "summary.json").read_text())
    assert summary["region_classes"] == ["cone", "cube", "cylinder", "sphere"] and summary["region_boxes"] > 16
    assert all(r["region_loss"] > 0 for r in logs)
    vocab = json.loads((out / "model" / "vocab.json").read_text())["vocab"]
    import math

    # per-token loss well below uniform guessing over the vocabulary: the decoder has learned something
    assert logs[-1]["caption_loss"] < math.log(len(vocab)) - 0.5, logs
    from qclip.data.world import COLOURS

    assert {"cube", "left", "photo"} <= set(vocab) and set(COLOURS) & set(vocab) and len(vocab) < 100
    # the in-repo captioner: patch tokens straight to the decoder, convolutional stem, both recorded in the folder
    cfg = json.loads((out / "model" / "open_clip_config.json").read_text())
    assert cfg["qclip"] == {"vision_stem": "conv"} and cfg["model_cfg"]["vision_cfg"]["attentional_pool"] is False
    cap = create_captioner(f"local-dir:{out / 'model'}", captioner_id="mine")
    from qclip.data.shards import ShardReader as R

    images = [s.pil() for s, _ in zip(R(world_dir / "val"), range(3))]
    texts = cap.caption(images, 2, Sampling(method="beam", num_beams=2, max_len=20))
    assert len(texts) == 3 and all(len(t) == 2 for t in texts)
    from qclip.models.vocab import words

    assert all(set(w for c in t for w in words(c)) <= set(vocab) for t in texts)  # decoded with the vocabulary
    # the same folder scores captions (CLIP score) through its own word vocabulary, not open_clip's BPE ids
    # (which index past its embedding table)
    assert main(["caption", "score", "--data", str(world_dir / "val"), "--scorer", str(out / "model"),
                 "--out", str(tmp_path / "scored"), "--id", "mine", "--quiet"]) == 0
    scored = [s.meta.get("scores", {}).get("mine") for s in R(tmp_path / "scored")]
    assert scored and all(scored), scored[:2]


def test_from_scratch_coca_decoder_is_initialised(tmp_path):
    """open_clip 3.3.0 leaves text_decoder.text_projection uninitialised (torch.empty); qclip initialises it."""
    import torch

    from qclip.models import create_clip

    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_COCA}))
    for _ in range(3):  # dirty the allocator with freed models first
        junk = torch.full((64, 49408), 1e22)
        del junk
        m = create_clip(f"local-dir:{tmp_path}").model
        w = m.text_decoder.text_projection
        assert torch.isfinite(w).all() and w.abs().max() < 1.0


def test_region_boxes_map_through_the_eval_transform():
    from qclip.captions.regions import box_in_input, object_boxes

    assert box_in_input((8, 16, 24, 40), 64, 64, 64) == (8, 16, 24, 40)  # the world's own size: unchanged
    assert box_in_input((0, 0, 32, 32), 128, 128, 64) == (0, 0, 16, 16)  # resized by half
    # 96x64 -> shortest side 64 (no resize), centre crop drops 16 px each side
    assert box_in_input((20, 0, 40, 10), 96, 64, 64) == (4, 0, 24, 10)
    assert box_in_input((0, 0, 10, 10), 96, 64, 64) is None  # cropped away
    meta = {"scene": {"objects": [{"bbox": [1, 2, 3, 4], "shape": "cube", "visible": True},
                                  {"bbox": [5, 6, 7, 8], "shape": "cone", "visible": False}]}}
    assert object_boxes(meta) == [((1, 2, 3, 4), "cube")] and object_boxes({}) == []


def test_region_head_pools_the_tokens_under_each_box():
    import torch

    from qclip.captions.regions import RegionHead

    head = RegionHead(width=3, n_classes=2, grid=4, image_size=32)  # 8 px cells
    tokens = torch.zeros(1, 16, 3)
    tokens[0, 1 * 4 + 2] = torch.tensor([1.0, 2.0, 3.0])  # row 1, column 2
    tokens[0, 1 * 4 + 3] = torch.tensor([3.0, 2.0, 1.0])  # row 1, column 3
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(2, 3))
        head.fc.bias.zero_()
    logits, targets = head(tokens, [[((17.0, 9.0, 23.0, 15.0), 1), ((17.0, 8.0, 25.0, 16.0), 0)]])
    assert torch.allclose(logits[0], torch.tensor([1.0, 2.0]))  # inside one cell: that token
    assert torch.allclose(logits[1], torch.tensor([2.0, 2.0]))  # touches columns 2 and 3: their mean
    assert targets.tolist() == [1, 0]


def test_pixel_cache_gives_the_same_items(world_dir, coca_dir):
    """The captioner's loader caches transformed images; items (pixels and the drawn caption) must not change."""
    import torch

    from qclip.data.policy import CaptionPolicy
    from qclip.models import create_clip
    from qclip.models.vocab import WordTokenizer
    from qclip.train.shard_dataset import ClipShardDataset

    transform = create_clip(f"local-dir:{coca_dir}").preprocess_val
    policy = CaptionPolicy.parse("reference")
    texts = [t for s in ShardReader(world_dir / "curated") for t in s.captions["reference"]]
    tok = WordTokenizer.from_texts(texts)
    plain = ClipShardDataset(world_dir / "curated", policy, transform, tok, seed=3)
    cached = ClipShardDataset(world_dir / "curated", policy, transform, tok, seed=3, cache_pixels=True)
    for epoch in (0, 1):
        for i in range(len(plain)):
            a, b = plain[(i, epoch)], cached[(i, epoch)]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert len(cached._pixels) == len(plain)


def test_caption_train_after_a_kill_between_vocabulary_and_config(world_dir, tmp_path):
    """A kill after the vocabulary was written but before the model config left a folder that open_clip cannot
    load; the next run must write the config again and train (it failed with "No such file: open_clip_config.json")."""
    out = tmp_path / "captioner"
    (out / "model").mkdir(parents=True)
    (out / ".qclip").write_text("written by qclip caption train")  # as the killed run left it: a folder qclip made
    (out / "model" / "vocab.json").write_text(json.dumps({"vocab": ["<pad>"], "context_length": 8}))  # half-written state
    args = ["caption", "train", "--data", str(world_dir / "curated"), "--out", str(out), "--quiet",
            "captioner.steps=2", "captioner.batch_size=8", "captioner.warmup_steps=1", "captioner.workers=0",
            "captioner.width=64", "captioner.vision_layers=2"]
    assert main(args) == 0
    assert (out / "model" / "open_clip_config.json").is_file() and (out / "summary.json").is_file()
    assert "cube" in json.loads((out / "model" / "vocab.json").read_text())["vocab"]  # rebuilt from the captions
