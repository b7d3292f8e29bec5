import math
import re

import numpy as np
import pytest
from conftest import tiny_config

from qclip.data import world_shards as ws
from qclip.data.shards import ShardReader
from qclip.data.world import COLOURS, SEG_CLASSES, SHAPE_WORDS, SIZES, WorldSpec, make_sample

SPEC = WorldSpec(seed=7, split="val", image_size=64, min_objects=2, max_objects=4, alt_text_relevance=0.3,
                 descriptions_per_image=5, image_format="png", with_reference=True, with_dense=True)


def camera_rays(cam, size):
    """Independent re-derivation of the pinhole camera, from the record alone."""
    p = math.radians(cam["pitch_deg"])
    focal = (size / 2) / math.tan(math.radians(cam["fov_deg"]) / 2)
    fwd = np.array([0, -math.sin(p), math.cos(p)])
    up = np.array([0, math.cos(p), math.sin(p)])
    u = np.arange(size) + 0.5 - size / 2
    jj, ii = np.meshgrid(u, u)
    d = fwd + jj[..., None] / focal * np.array([1, 0, 0]) - ii[..., None] / focal * up
    return d / np.linalg.norm(d, axis=-1, keepdims=True), fwd


@pytest.mark.parametrize("index", range(6))
def test_depth_and_mask_are_exact(index):
    s = make_sample(SPEC, index)
    rec, size = s.meta["scene"], 64
    d, fwd = camera_rays(rec["camera"], size)
    origin = np.array([0, rec["camera"]["height"], 0])
    floor = s.seg == SEG_CLASSES.index("floor")
    t_floor = rec["camera"]["height"] / -d[..., 1]
    np.testing.assert_allclose(s.depth[floor], (t_floor * (d @ fwd))[floor], rtol=1e-5)
    wall = s.seg == SEG_CLASSES.index("wall")
    t_wall = rec["camera"]["wall_z"] / d[..., 2]
    np.testing.assert_allclose(s.depth[wall], (t_wall * (d @ fwd))[wall], rtol=1e-5)
    for k, o in enumerate(rec["objects"]):
        if o["shape"] != "sphere" or not o["pixels"]:
            continue
        r = SIZES[o["size"]]
        oc = origin - np.array([o["x"], r, o["z"]])
        b = d @ oc
        disc = b * b - (oc @ oc - r * r)
        t = -b - np.sqrt(np.maximum(disc, 0))
        mine = (s.seg == SEG_CLASSES.index("sphere")) & (disc > 0) & (t * (d @ fwd) <= s.depth + 1e-4)
        hit = mine & np.isclose(s.depth, t * (d @ fwd), rtol=1e-5)
        assert hit.sum() >= o["pixels"] * 0.99  # every pixel of this sphere is where the sphere is
    # classes in the mask are exactly floor/wall and the shapes of objects with pixels
    present = {SEG_CLASSES[c] for c in np.unique(s.seg)}
    with_pixels = {o["shape"] for o in rec["objects"] if o["pixels"]}
    assert present - {"floor", "wall"} == with_pixels
    assert sum(o["pixels"] for o in rec["objects"]) == int((s.seg >= 2).sum())


def _objects_in(text):
    found = []
    words = r"|".join(w for ws_ in SHAPE_WORDS.values() for w in ws_)
    for m in re.finditer(rf"\b({'|'.join(COLOURS)}) ({words})\b", text):
        shape = next(k for k, v in SHAPE_WORDS.items() if m.group(2) in v)
        found.append((m.group(1), shape))
    return found


def test_descriptions_name_every_visible_object_with_correct_relations():
    checked_lr = 0
    for i in range(40):
        s = make_sample(SPEC, i)
        objs = [o for o in s.meta["scene"]["objects"] if o["visible"]]
        truth = {(o["colour"], o["shape"]) for o in objs}
        unique = len(truth) == len(objs)
        refs = s.captions["reference"]
        assert len(refs) == 5 and len(set(refs)) >= 2  # several, varied descriptions
        for text in refs:
            named = set(_objects_in(text))
            assert truth <= named, (text, truth)
            assert named <= {(o["colour"], o["shape"]) for o in s.meta["scene"]["objects"]}
            if unique and "is to the left of" in text:
                a, b = text.split("is to the left of")
                (ca, sa), (cb, sb) = _objects_in(a)[0], _objects_in(b)[0]
                xa = next(o["centroid"][0] for o in objs if (o["colour"], o["shape"]) == (ca, sa))
                xb = next(o["centroid"][0] for o in objs if (o["colour"], o["shape"]) == (cb, sb))
                assert xa < xb, text
                checked_lr += 1
            if unique and "from left to right" in text:
                xs = [next(o["centroid"][0] for o in objs if (o["colour"], o["shape"]) == n) for n in _objects_in(text)]
                assert xs == sorted(xs), text
    assert checked_lr > 0


@pytest.mark.parametrize("relevance", [0.0, 1.0])
def test_alt_text_relevance_is_a_parameter(relevance):
    spec = WorldSpec(**{**SPEC.__dict__, "alt_text_relevance": relevance, "split": "pool",
                        "with_reference": False, "with_dense": False})
    samples = [make_sample(spec, i) for i in range(60)]
    kinds = [s.meta["alt_text_kind"] for s in samples]
    if relevance == 0:
        assert "partial" not in kinds and {"boilerplate", "filename", "wrong", "empty"} <= set(kinds)
        for s in samples:
            if s.meta["alt_text_kind"] == "wrong":  # names nothing that is in the picture
                present = {(o["colour"], o["shape"]) for o in s.meta["scene"]["objects"]}
                assert not set(_objects_in(s.captions["raw"][0])) & present
    else:
        assert all(k == "partial" for k, s in zip(kinds, samples) if any(o["visible"] for o in s.meta["scene"]["objects"]))
    assert all(s.captions["reference"] == [] and s.seg is None for s in samples)  # pool: alt-text only


def test_context_alt_text_names_the_setting_and_leaves_everything_else_alone():
    """world.alt_text_context replaces a share of the relevant alt-text with text about the floor and wall; the
    image, the other alt-text and the reference descriptions are those of the world without it."""
    base = WorldSpec(**{**SPEC.__dict__, "alt_text_relevance": 1.0})
    ctx = WorldSpec(**{**base.__dict__, "alt_text_context": 0.5})
    shape_words = {w for words in SHAPE_WORDS.values() for w in words}
    kinds = []
    for i in range(40):
        a, b = make_sample(base, i), make_sample(ctx, i)
        assert a.image == b.image and a.captions["reference"] == b.captions["reference"]
        kinds.append(b.meta["alt_text_kind"])
        if b.meta["alt_text_kind"] == "context":
            text, scene = b.captions["raw"][0], b.meta["scene"]
            assert not set(re.findall(r"[a-z]+", text)) & shape_words, text
            assert f"{scene['floor']} floor" in text or f"{scene['wall']} wall" in text, text
        else:
            assert a.captions["raw"] == b.captions["raw"] and a.meta["alt_text_kind"] == b.meta["alt_text_kind"]
    assert 8 <= kinds.count("context") <= 32 and "partial" in kinds


def test_world_key_leaves_out_neutral_alt_text_settings():
    from qclip.config import WorldConfig, world_result_keys
    from qclip.data.world_shards import _fingerprint
    keys = world_result_keys(WorldConfig())
    assert "alt_text_context" not in keys and "alt_text_unnamed" not in keys  # cached worlds keep their key
    assert world_result_keys(WorldConfig(alt_text_context=0.5))["alt_text_context"] == 0.5
    assert world_result_keys(WorldConfig(alt_text_unnamed=["cone"]))["alt_text_unnamed"] == ["cone"]
    assert "alt_text_unnamed" not in _fingerprint(SPEC, 10, 5)  # a WorldSpec holds the list as a tuple
    assert _fingerprint(WorldSpec(**{**SPEC.__dict__, "alt_text_unnamed": ("cone",)}), 10, 5)["alt_text_unnamed"]


def test_unnamed_shapes_never_appear_in_alt_text_and_nothing_else_changes():
    """world.alt_text_unnamed: alt-text names none of those shapes (relevant alt-text names the biggest of the
    others); the images are the same, and the reference descriptions still name every shape."""
    base = WorldSpec(**{**SPEC.__dict__, "alt_text_relevance": 1.0})
    unn = WorldSpec(**{**base.__dict__, "alt_text_unnamed": ("cylinder", "cone")})
    banned = {w for s in ("cylinder", "cone") for w in SHAPE_WORDS[s]}
    partial, named_in_reference = 0, set()
    for i in range(40):
        a, b = make_sample(base, i), make_sample(unn, i)
        assert a.image == b.image
        text = b.captions["raw"][0] if b.captions["raw"] else ""
        assert not set(re.findall(r"[a-z]+", text)) & banned, text
        named_in_reference |= set(re.findall(r"[a-z]+", " ".join(b.captions["reference"]))) & banned
        visible = [o for o in b.meta["scene"]["objects"] if o["visible"] and o["shape"] in ("cube", "sphere")]
        partial += b.meta["alt_text_kind"] == "partial"
        assert (b.meta["alt_text_kind"] == "partial") == bool(visible)  # relevance 1: named when there is one
    assert partial >= 10 and named_in_reference == banned


def test_unnamed_shapes_must_be_world_shapes():
    from qclip.config import ConfigError
    with pytest.raises(ConfigError, match="alt_text_unnamed"):
        ws.split_plan(tiny_config(alt_text_unnamed="[pyramid]"))
    with pytest.raises(ConfigError, match="alt_text_unnamed"):
        ws.split_plan(tiny_config(alt_text_unnamed="[cube,sphere,cylinder,cone]"))


def test_world_shapes_pick_from_the_renderer_and_set_the_classes(tmp_path):
    """world.shapes: objects come from those shapes only, each new shape is drawn with its own class id (the
    manifest lists them after floor and wall), and the baselines and zero-shot read them from the manifest."""
    from qclip.config import ConfigError, WorldConfig, world_result_keys
    from qclip.data.world import ALL_SHAPES, seg_classes
    from qclip.evaluate.zeroshot import labelled_images
    from qclip.train.baselines import box_targets, object_labels
    shapes = ("pillar", "dome", "disc", "wedge", "cube")
    spec = WorldSpec(**{**SPEC.__dict__, "shapes": shapes})
    seen = set()
    for i in range(30):
        s = make_sample(spec, i)
        for k, o in enumerate(s.meta["scene"]["objects"]):
            assert o["shape"] in shapes
            if o["visible"]:
                seen.add(o["shape"])
                assert (s.seg == seg_classes(shapes).index(o["shape"])).sum() > 0
        assert s.seg.max() < len(seg_classes(shapes))
    assert seen == set(shapes)
    cfg = tiny_config(shapes="[pillar,dome,disc,wedge,cube]", n_pool=8, n_curated=4, n_dense=8, n_dev=0, n_val=4)
    ws.build_world(cfg, tmp_path, progress=False)
    assert ShardReader(tmp_path / "val").manifest["seg_classes"] == ["floor", "wall", *shapes]
    assert ws.world_shapes(tmp_path / "pool") == shapes
    scene = next(iter(ShardReader(tmp_path / "curated"))).meta["scene"]
    assert object_labels(scene, shapes).shape == (8 * len(shapes),) and box_targets(scene, 64, shapes).max() <= 5
    classes, _, labels = labelled_images(tmp_path / "val")
    assert classes == list(shapes) and all(0 <= y < len(shapes) for y in labels)
    # the default world's key and fingerprint are unchanged; another shape list is another world
    assert "shapes" not in world_result_keys(WorldConfig()) and "shapes" not in ws._fingerprint(SPEC, 10, 5)
    assert world_result_keys(WorldConfig(shapes=list(shapes)))["shapes"] == list(shapes)
    assert set(ALL_SHAPES) == set(SHAPE_WORDS)
    for bad in ("[cube,pyramid]", "[cube,cube]", "[]"):
        with pytest.raises(ConfigError, match="world.shapes"):
            ws.split_plan(tiny_config(shapes=bad))
    with pytest.raises(ConfigError, match="alt_text_unnamed"):  # unnamed shapes must be the world's
        ws.split_plan(tiny_config(shapes="[cube,sphere]", alt_text_unnamed="[cone]"))


def test_default_shapes_are_the_configs():
    from qclip.config import NEUTRAL_WORLD_KEYS, WorldConfig
    from qclip.data.world import SHAPES
    assert WorldConfig().shapes == list(SHAPES) == NEUTRAL_WORLD_KEYS["shapes"]


def test_world_splits_and_determinism(world_dir, tmp_path):
    m = {split: ShardReader(world_dir / split).manifest for split in ws.SPLITS}
    assert {k: v["num_samples"] for k, v in m.items()} == {"curated": 16, "dense": 16, "dev": 4, "val": 8, "pool": 48}
    assert m["pool"]["hflip_safe"] is False and m["val"]["seg_classes"] == list(SEG_CLASSES)
    assert m["val"]["stuff_classes"] == ["floor", "wall"]
    # the development split is labelled like val and shares no image with it
    dev, val = list(ShardReader(world_dir / "dev")), list(ShardReader(world_dir / "val"))
    assert all(s.seg is not None and s.depth is not None for s in dev)
    assert not {s.image for s in dev} & {s.image for s in val}
    pool = list(ShardReader(world_dir / "pool"))
    assert all(not s.captions["reference"] and s.seg is None for s in pool)
    assert all(len(s.captions["reference"]) == 5 for s in ShardReader(world_dir / "curated"))
    dense = list(ShardReader(world_dir / "dense"))
    assert all(s.seg is not None and s.depth.dtype == np.float32 for s in dense)
    again = tmp_path / "again"
    ws.build_world(tiny_config(), again, progress=False)
    for split in ws.SPLITS:
        assert [s["sha256"] for s in ShardReader(again / split).manifest["shards"]] == \
               [s["sha256"] for s in m[split]["shards"]]
    other = tmp_path / "other"
    cfg = tiny_config()
    cfg.seed = 1
    ws.build_world(cfg, other, progress=False)
    assert ShardReader(other / "pool").manifest["shards"][0]["sha256"] != m["pool"]["shards"][0]["sha256"]


def test_world_resumes_after_interruption(world_dir, tmp_path, monkeypatch):
    out = tmp_path / "w"
    real = ws._shard_task
    calls = []

    def flaky(task):
        calls.append(task)
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed mid-run
        return real(task)

    monkeypatch.setattr(ws, "_shard_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        ws.build_world(tiny_config(), out, progress=False)
    monkeypatch.setattr(ws, "_shard_task", real)
    partial = [p for p in out.iterdir() if p.name.endswith(".partial")]
    assert partial, "interrupted splits keep their finished shards"
    info = ws.build_world(tiny_config(), out, progress=False)
    assert 0 < info["generated"] < 92  # only what was missing
    for split in ws.SPLITS:
        assert ShardReader(out / split).manifest["shards"] == \
            [{**s} for s in ShardReader(world_dir / split).manifest["shards"]]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    info = ws.build_world(tiny_config(), out, progress=False)
    assert info["generated"] == 0 and sorted(info["reused"]) == sorted(ws.SPLITS)
    info = ws.build_world(tiny_config(alt_text_relevance=0.9), out, progress=False)
    assert info["generated"] == 92  # a changed config regenerates every split it touches


def test_preview(world_dir, tmp_path):
    path = ws.write_preview(world_dir, tmp_path / "p.png", n=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fewer_colours_restrict_the_palette():
    spec = WorldSpec(seed=0, split="pool", image_size=32, min_objects=4, max_objects=4, alt_text_relevance=1.0,
                     descriptions_per_image=1, image_format="png", with_reference=False, with_dense=False, colours=2)
    used = {o["colour"] for i in range(20) for o in make_sample(spec, i).meta["scene"]["objects"]}
    assert used <= set(list(COLOURS)[:2]) and len(used) == 2


def test_world_builds_the_splits_asked_for_and_adds_the_rest_later(tmp_path):
    out = tmp_path / "w"
    info = ws.build_world(tiny_config(), out, progress=False, splits=("pool", "val"))
    assert set(info["splits"]) == {"pool", "val"} and not (out / "curated").exists()
    pool_bytes = sorted((str(p), p.read_bytes()) for p in (out / "pool").rglob("*") if p.is_file())
    info = ws.build_world(tiny_config(), out, progress=False)  # a later study that trains the captioner
    assert set(info["reused"]) == {"pool", "val"} and (out / "curated").is_dir()
    assert sorted((str(p), p.read_bytes()) for p in (out / "pool").rglob("*") if p.is_file()) == pool_bytes
    with pytest.raises(ValueError, match="unknown splits"):
        ws.build_world(tiny_config(), out, progress=False, splits=("train",))


def test_study_leaves_out_the_curated_split_only_when_nothing_trains_on_it():
    from qclip.study import world_splits
    shipped = {"study.captioner": "assets/captioners/tiny"}
    assert "curated" not in world_splits(_study_config(shipped, "[clip-raw,clip-synthetic,random,mim,supervised]"))
    assert "curated" in world_splits(_study_config({"study.captioner": ""}, "[clip-raw,random]"))  # trains one
    assert "curated" in world_splits(_study_config(shipped, "[clip-raw,boxes]"))  # a baseline on curated boxes
    assert "curated" in world_splits(_study_config(shipped, "[clip-synthetic-captions-only]"))  # its own captioner


def _study_config(extra: dict, methods: str):
    from qclip.config import load_config
    return load_config(None, [f"{k}={v}" for k, v in extra.items()] + [f"study.methods={methods}"])

