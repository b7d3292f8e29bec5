import numpy as np
import pytest
from PIL import Image

from qclip.data.dense import IGNORE_INDEX, DenseDataError, open_dense
from qclip.data.skips import TooManyBadSamples


def save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def rgb(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ade20k_layout_reduce_zero_label_and_bad_pairs(tmp_path):
    root = tmp_path / "ade"
    for i in range(3):
        save(root / "images/training" / f"ADE_{i}.jpg", rgb(seed=i))
        m = np.zeros((24, 32), np.uint8)
        m[:, 16:] = 150
        m[0, 0] = 1
        save(root / "annotations/training" / f"ADE_{i}.png", m)
    save(root / "images/training/ADE_wrong.jpg", rgb())
    save(root / "annotations/training/ADE_wrong.png", np.zeros((10, 10), np.uint8))  # wrong size
    save(root / "images/training/ADE_nomask.jpg", rgb())
    save(root / "images/training/ADE_range.jpg", rgb())
    save(root / "annotations/training/ADE_range.png", np.full((24, 32), 200, np.uint8))  # id 200 > 150
    with pytest.raises(TooManyBadSamples, match="3 of 6"):
        open_dense(root, "ade20k", "segmentation", "train")  # 50% bad: above the default 5%
    ds = open_dense(root, "ade20k", "segmentation", "train", max_bad_fraction=0.5)
    assert len(ds) == 3 and ds.skips.as_dict() == {"mask size mismatch": 1, "missing file": 1, "class id out of range": 1}
    assert "kept 3 of 6" in ds.summary()
    item = ds[0]
    seg = item["seg"]
    assert seg.dtype == np.int64 and seg[0, 0] == 0 and seg[5, 20] == 149 and seg[5, 5] == IGNORE_INDEX
    assert item["image"].size == (32, 24)


def test_voc_layout(tmp_path):
    root = tmp_path / "VOC2012"
    ids = ["2007_000001", "2007_000002"]
    for i, k in enumerate(ids):
        save(root / "JPEGImages" / f"{k}.jpg", rgb(seed=i))
        m = np.zeros((24, 32), np.uint8)
        m[4:10, 4:10] = 15
        m[3, :] = 255
        img = Image.fromarray(m, mode="L").convert("P")  # palette PNG as VOC ships
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        img.save(root / "SegmentationClass" / f"{k}.png")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    ds = open_dense(root, "voc", "segmentation", "val")
    seg = ds[1]["seg"]
    assert len(ds) == 2 and seg[5, 5] == 15 and seg[3, 0] == IGNORE_INDEX and seg[20, 20] == 0
    with pytest.raises(DenseDataError, match="train.txt"):
        open_dense(root, "voc", "segmentation", "train")


def test_nyu_layout_millimetres_and_invalid(tmp_path):
    root = tmp_path / "nyu"
    for i in range(2):
        save(root / "test/kitchen" / f"rgb_{i:05d}.jpg", rgb(seed=i))
        d = np.full((24, 32), 2500, np.uint16)
        d[0, :] = 0  # invalid
        d[1, :] = 20000  # 20 m -> clamped to max_depth
        save(root / "test/kitchen" / f"sync_depth_{i:05d}.png", d)
    save(root / "test/kitchen/rgb_00009.jpg", rgb())
    save(root / "test/kitchen/sync_depth_00009.png", np.zeros((24, 32), np.uint16))  # nothing valid
    ds = open_dense(root, "nyu", "depth", "test", max_bad_fraction=0.5)
    assert len(ds) == 2 and ds.skips.as_dict() == {"no valid depth": 1}
    depth = ds[0]["depth"]
    assert depth.dtype == np.float32 and depth[5, 5] == pytest.approx(2.5)
    assert depth[0, 0] == 0 and depth[1, 0] == pytest.approx(10.0)


def test_folder_layout_nan_depth(tmp_path):
    root = tmp_path / "f"
    save(root / "train/images/a.png", rgb())
    (root / "train/depth").mkdir(parents=True)
    d = np.ones((24, 32), np.float32) * 3
    d[0, 0], d[0, 1] = np.nan, np.inf
    np.save(root / "train/depth/a.npy", d)
    ds = open_dense(root, "folder", "depth", "train")
    depth = ds[0]["depth"]
    assert depth[0, 0] == 0 and depth[0, 1] == 0 and depth[5, 5] == 3  # non-finite -> invalid (0)


def test_qclip_world_layout(world_dir):
    seg = open_dense(world_dir, "qclip", "segmentation", "dense")
    depth = open_dense(world_dir, "qclip", "depth", "val")
    assert len(seg) == 16 and len(depth) == 8 and seg.num_classes == 6
    assert seg[0]["seg"].shape == (64, 64) and depth[0]["depth"].max() > 2
    with pytest.raises(DenseDataError, match="has no seg"):
        open_dense(world_dir, "qclip", "segmentation", "pool")
    with pytest.raises(DenseDataError, match="unknown layout"):
        open_dense(world_dir, "cityscapes", "segmentation")


def test_num_classes_on_a_qclip_dataset_that_names_its_classes(world_dir):
    """transfer.num_classes (a documented key) on the world's dense split: its own count is accepted, another
    one is a DenseDataError naming the manifest's count (was a TypeError: num_classes given twice)."""
    from qclip.data.dense import DenseDataError, open_dense

    n = open_dense(world_dir, "qclip", "segmentation", "dense").num_classes
    assert open_dense(world_dir, "qclip", "segmentation", "dense", num_classes=n).num_classes == n
    with pytest.raises(DenseDataError, match=f"set transfer.num_classes={n} or leave it 0"):
        open_dense(world_dir, "qclip", "segmentation", "dense", num_classes=n - 2)


def test_colour_masks_and_1d_depth_maps_are_skipped_with_their_reason_and_file(tmp_path):
    """ADE20k annotations saved as colour PNGs (visualised masks), and a 1-d depth .npy in a folder dataset:
    the message says why and names the file (was "unreadable target" with no file, and an IndexError)."""
    root = tmp_path / "ade"
    for i in range(3):
        save(root / "images/training" / f"ADE_{i}.jpg", rgb(seed=i))
        save(root / "annotations/training" / f"ADE_{i}.png", rgb(seed=10 + i))  # 3 channels
    with pytest.raises(DenseDataError, match=r"3 mask not single-channel \(a colour picture") as e:
        open_dense(root, "ade20k", "segmentation", "train")
    assert "annotations/training/ADE_0.png" in str(e.value)
    folder = tmp_path / "folder"
    save(folder / "train/images/a.png", rgb())
    (folder / "train/depth").mkdir(parents=True)
    np.save(folder / "train/depth/a.npy", np.ones(24, np.float32))
    with pytest.raises(DenseDataError, match="depth map not 2-d"):
        open_dense(folder, "folder", "depth", "train")
