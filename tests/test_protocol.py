"""Each item of the dense-transfer protocols (docs/dense_protocols.md) against a known answer: every test here
fails when its item is switched off or computed another way."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import tv_tensors

from qclip.config import load_config
from qclip.transfer.augment import (
    PhotoMetricDistortion,
    RandomCropCatMax,
    keep_ratio_size,
    train_transform,
)
from qclip.transfer.inference import predict, slide_inference


def _transfer(*over: str):
    return load_config(None, list(over)).transfer


# --- optimisation -----------------------------------------------------------------------------------------


def _lr_per_param(spec: str, size: int, **over) -> tuple[dict[str, float], object]:
    from qclip.transfer.encoders import load_encoder
    from qclip.transfer.heads import DenseHead
    from qclip.transfer.run import EncoderWithHead, optimizer_groups

    torch.manual_seed(0)
    enc = load_encoder(spec, size, 4)
    head = DenseHead(enc.info.channels, enc.info.plain, "segmentation", "finetune", 5, 8)
    net = EncoderWithHead(enc, head)
    t = _transfer("transfer.mode=finetune", "transfer.lr=1.0", *[f"transfer.{k}={v}" for k, v in over.items()])
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)]: g["lr"] for g in optimizer_groups(net, t) for p in g["params"]}, net


def test_layer_decay_on_an_open_clip_vit_follows_mmseg_block_by_block():
    lr, net = _lr_per_param("random:qclip-vit-tiny", 32, layer_decay=0.65, encoder_lr_mult=1.0)
    blocks = len(net.encoder.tower.transformer.resblocks)
    assert lr["encoder.tower.conv1.weight"] == pytest.approx(0.65 ** (blocks + 1))  # the stem: deepest decay
    assert lr["encoder.tower.positional_embedding"] == pytest.approx(0.65 ** (blocks + 1))
    for i in range(blocks):  # block i of N at decay^(N - i): the last block one step below the head
        assert lr[f"encoder.tower.transformer.resblocks.{i}.attn.in_proj_weight"] == pytest.approx(0.65 ** (blocks - i))
    assert all(v == 1.0 for k, v in lr.items() if k.startswith("head."))
    off, _ = _lr_per_param("random:qclip-vit-tiny", 32, layer_decay=1.0, encoder_lr_mult=1.0)
    assert set(off.values()) == {1.0}  # switched off: one lr


def test_layer_decay_groups_equal_timms_on_a_timm_tower():
    from timm.optim import param_groups_layer_decay

    lr, net = _lr_per_param("random:timm:vit_tiny_patch16_224", 32, layer_decay=0.65, encoder_lr_mult=1.0)
    tower = net.encoder.tower
    names = {id(p): n for n, p in tower.named_parameters()}
    timm_scale = {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(tower, 0.05, layer_decay=0.65)
                  for p in g["params"]}
    assert {n: lr[f"encoder.tower.{n}"] for n in timm_scale} == pytest.approx(timm_scale)
    assert len(set(timm_scale.values())) > 10


def test_layer_decay_on_the_mci_groups_stem_before_stages_and_keeps_encoder_lr_mult():
    lr, net = _lr_per_param("random:qclip-mci-tiny", 64, layer_decay=0.5, encoder_lr_mult=0.1)
    stem = [v for k, v in lr.items() if ".trunk.stem." in k]
    last_stage = [v for k, v in lr.items() if ".trunk.stages.3." in k]
    assert max(stem) < min(last_stage) < 0.1 + 1e-12  # the encoder's lr mult applies on top
    assert all(v == 1.0 for k, v in lr.items() if k.startswith("head."))


def test_weight_decay_skips_position_and_class_embeddings_under_layer_decay():
    from qclip.transfer.encoders import load_encoder
    from qclip.transfer.heads import DenseHead
    from qclip.transfer.run import EncoderWithHead, optimizer_groups

    enc = load_encoder("random:qclip-vit-tiny", 32, 4)
    net = EncoderWithHead(enc, DenseHead(enc.info.channels, True, "segmentation", "finetune", 5, 8))
    t = _transfer("transfer.mode=finetune", "transfer.layer_decay=0.65", "transfer.weight_decay=0.05")
    wd = {id(p): g["weight_decay"] for g in optimizer_groups(net, t) for p in g["params"]}
    assert wd[id(enc.tower.positional_embedding)] == 0 and wd[id(enc.tower.class_embedding)] == 0
    assert wd[id(enc.tower.conv1.weight)] == 0.05


def test_poly_schedule_is_linear_to_zero_after_warmup():
    from qclip.optim import lr_lambda

    poly, cosine = lr_lambda(10, 110, 1.0, 0.0, "poly"), lr_lambda(10, 110, 1.0, 0.0)
    assert [poly(s) for s in (0, 9)] == [0.1, 1.0]
    assert [poly(s) for s in (10, 35, 60, 110)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    assert cosine(35) != pytest.approx(0.75)


# --- training pipeline ------------------------------------------------------------------------------------


def test_keep_ratio_resize_is_mmcvs_rescale():
    assert keep_ratio_size(480, 640, 512, 2048) == (512, 683)  # the short side binds
    assert keep_ratio_size(100, 1000, 512, 2048) == (205, 2048)  # the long side binds
    assert keep_ratio_size(480, 640, 256, 1024) == (256, 341)  # ratio 0.5 of (2048, 512)
    assert keep_ratio_size(480, 640, 64) == (64, 85)  # no long bound


def _blocks_image(h: int, w: int, classes: int = 10, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A class map of square blocks and an image whose red channel is class / (classes - 1) (piecewise constant)."""
    rng = np.random.default_rng(0)
    cls = torch.from_numpy(rng.integers(0, classes, (h // block, w // block)))
    cls = cls.repeat_interleave(block, 0).repeat_interleave(block, 1)
    img = torch.stack([cls.float() / (classes - 1), torch.zeros(h, w), torch.ones(h, w) * 0.5])
    return img, cls


def test_augmentation_keeps_masks_aligned_with_images():
    """Two classes, the image's red channel the class: wherever resizing left a pixel pure (red near 0 or 1) the
    mask says the same class. A mask cropped, resized or flipped apart from its image agrees about half the time."""
    torch.manual_seed(0)
    img, cls = _blocks_image(96, 128, classes=2, block=16)
    tf = train_transform(48, (0.5, 2.0), [256, 64], cat_max_ratio=0.75)
    for _ in range(10):
        out_img, out_mask = tf(tv_tensors.Image(img), tv_tensors.Mask(cls.float()))
        assert out_img.shape[-2:] == out_mask.shape[-2:] and max(out_mask.shape[-2:]) <= 48
        red = out_img[0]
        pure = (red < 0.1) | (red > 0.9)
        assert pure.float().mean() > 0.5
        assert ((red[pure] > 0.5).float() == out_mask[pure]).float().mean() > 0.99
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}  # nearest: never a blend of two class ids


def test_random_crop_cat_max_ratio_redraws_crops_one_class_fills():
    mask = torch.zeros(64, 64)
    mask[:, 48:] = 1  # class 0 fills 3/4 of the image; a 32 crop holds class 1 only near the right
    crops = {}
    for ratio in (0.75, 1.0):
        torch.manual_seed(0)
        crop = RandomCropCatMax(32, ratio)
        fracs = []
        for _ in range(50):
            _, m = crop(tv_tensors.Image(torch.zeros(3, 64, 64)), tv_tensors.Mask(mask))
            counts = torch.bincount(m.long().flatten(), minlength=2)
            fracs.append(float(counts.max() / counts.sum()))
        crops[ratio] = np.mean([f < 0.75 for f in fracs])
    assert crops[0.75] > 0.9 and crops[1.0] < 0.5


def test_photometric_distortion_changes_the_image_not_the_mask():
    torch.manual_seed(0)
    img, cls = _blocks_image(32, 32)
    pd = PhotoMetricDistortion()
    changed = 0
    for _ in range(8):
        out_img, out_mask = pd(tv_tensors.Image(img), tv_tensors.Mask(cls.float()))
        assert torch.equal(out_mask, cls.float()) and out_img.min() >= 0 and out_img.max() <= 1
        changed += not torch.allclose(out_img, img)
    assert changed >= 6  # four jitters, each at probability 1/2: an image passes untouched 1 time in 16
    ds_off = train_transform(32, (1.0, 1.0), photometric=False)
    assert not any(isinstance(t, PhotoMetricDistortion) for t in ds_off.transforms)


# --- model --------------------------------------------------------------------------------------------------


def test_auxiliary_head_trains_beside_the_main_one_and_its_loss_enters_with_its_weight():
    from qclip.transfer.heads import DenseHead
    from qclip.transfer.run import _loss

    torch.manual_seed(0)
    feats = [torch.randn(2, 16, 4, 4) for _ in range(4)]
    target = torch.randint(0, 5, (2, 32, 32))
    head = DenseHead([16] * 4, True, "segmentation", "finetune", 5, 16, aux_level=2).train()
    main, aux = head(feats, (32, 32))
    assert main.shape == aux.shape == (2, 5, 32, 32)
    t = _transfer("transfer.aux_loss_weight=0.4")
    from qclip.transfer.losses import segmentation_loss
    expected = segmentation_loss(main, target) + 0.4 * segmentation_loss(aux, target)
    assert _loss(t, (main, aux), target).item() == pytest.approx(expected.item())
    assert torch.is_tensor(head.eval()(feats, (32, 32)))  # evaluation: the main head alone
    assert DenseHead([16] * 4, True, "segmentation", "finetune", 5, 16).aux is None  # off: no auxiliary head


# --- inference ----------------------------------------------------------------------------------------------


def _pointwise(c: int = 3):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, c, 1)
    return lambda x, size: nn.functional.interpolate(conv(x), size=size) if x.shape[-2:] != size else conv(x)


@torch.no_grad()
def test_sliding_window_equals_whole_image_inference_when_one_window_covers_it():
    fwd = _pointwise()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(slide_inference(fwd, x, 32, 21, "segmentation"), fwd(x, (32, 32)), atol=1e-6)


@torch.no_grad()
def test_sliding_window_places_and_averages_overlapping_windows():
    """A pointwise network gives every window the whole image's values where they overlap: any misplaced or
    mis-counted window changes the result. A window-dependent network (each window's mean added) does not."""
    fwd = _pointwise()
    x = torch.randn(1, 3, 40, 57)
    assert torch.allclose(slide_inference(fwd, x, 32, 12, "segmentation", batch_size=2), fwd(x, (40, 57)), atol=1e-5)
    calls = []

    def counting(w, size):
        calls.append(len(w))
        return fwd(w, size) + w.mean((1, 2, 3), keepdim=True)

    out = slide_inference(counting, x, 32, 12, "segmentation")
    assert sum(calls) == 2 * 4  # rows: ceil((40-32)/12)+1 = 2; columns: ceil((57-32)/12)+1 = 4
    assert not torch.allclose(out, fwd(x, (40, 57)), atol=1e-3)


@torch.no_grad()
def test_multi_scale_and_flip_average_probabilities_over_every_view():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)  # not flip-equivariant
    sizes = []

    def fwd(x, size):
        sizes.extend([tuple(x.shape[-2:])] * len(x))
        return nn.functional.interpolate(conv(x), size=size, mode="bilinear")

    x = torch.randn(1, 3, 24, 32)
    t = _transfer("transfer.image_size=24", "transfer.eval_mode=slide", "transfer.eval_scales=[1.0]",
                  "transfer.eval_flip=true")
    flipped = predict(fwd, x, (24, 32), t, "segmentation", torch.device("cpu"))
    plain = slide_inference(fwd, x, 24, 16, "segmentation")  # stride 0 = two thirds of the 24 window
    mirrored = slide_inference(fwd, x.flip(-1), 24, 16, "segmentation").flip(-1)
    assert torch.allclose(flipped, (plain.softmax(1) + mirrored.softmax(1)) / 2, atol=1e-6)
    assert not torch.allclose(flipped, plain.softmax(1), atol=1e-3)
    sizes.clear()
    t = _transfer("transfer.image_size=24", "transfer.eval_mode=slide", "transfer.eval_scales=[0.5,1.0,1.5]")
    predict(fwd, x, (24, 32), t, "segmentation", torch.device("cpu"))
    assert set(sizes) == {(24, 24)}  # every window is the training crop
    # windows per scale: 12x16 -> 1 (padded), 24x32 -> 1x2, 36x48 -> 2x3
    assert len(sizes) == 1 + 2 + 6


def test_whole_image_without_flips_is_the_plain_forward():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 1)
    x = torch.randn(2, 3, 16, 16)
    out = predict(lambda a, s: conv(a), x, (16, 16), _transfer(), "segmentation", torch.device("cpu"))
    assert torch.equal(out, conv(x))


def test_multi_scale_needs_sliding_windows():
    from qclip.config import ConfigError

    with pytest.raises(ConfigError, match="eval_mode=slide"):
        load_config(None, ["transfer.eval_scales=[0.5,1.0]"])


# --- depth --------------------------------------------------------------------------------------------------


def test_depth_metrics_include_silog_as_bts_computes_it():
    from qclip.transfer.metrics import DepthMetric

    g = torch.full((1, 8, 8), 2.0)
    m = DepthMetric(1e-3, 10.0)
    m.update(g * 1.5, g)  # a constant scale error: no scale-invariant error
    r = m.compute()
    assert r["SILog"] == pytest.approx(0.0, abs=1e-6) and r["AbsRel"] == pytest.approx(0.5)
    p = g.clone()
    p[0, :4] = 4.0  # half the pixels 2x too deep: log error 0 or log 2
    m = DepthMetric(1e-3, 10.0)
    m.update(p, g)
    assert m.compute()["SILog"] == pytest.approx(100 * math.log(2) / 2)
    assert {"delta1", "delta2", "delta3", "AbsRel", "RMSE", "log10", "SILog"} <= set(m.compute())


def test_level_indices_pick_mmsegs_blocks_and_a_missing_block_is_a_clear_error():
    from qclip.transfer.encoders import EncoderError, load_encoder

    torch.manual_seed(0)
    enc = load_encoder("random:qclip-vit-tiny", 32, [0, 2])
    x = torch.randn(1, 3, 32, 32)
    blocks = enc.tower.forward_intermediates(x, indices=4, intermediates_only=True)["image_intermediates"]
    assert [torch.equal(a, b) for a, b in zip(enc(x), (blocks[0], blocks[2]))] == [True, True]
    with pytest.raises(EncoderError, match="transfer.levels or choose transfer.level_indices"):
        load_encoder("random:qclip-vit-tiny", 32, 100)


def test_every_protocol_row_names_a_test_that_exists():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "dense_protocols.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", doc)
    named += [(f, n) for f, ns in re.findall(r"`(test_\w+\.py)::test_\w+`((?:, `::test_\w+`)+)", doc)
              for n in re.findall(r"::(test_\w+)", ns)]
    assert len(named) >= 15
    for file, name in named:
        assert f"def {name}(" in (root / "tests" / file).read_text(), f"{file}::{name}"
