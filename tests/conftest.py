"""Shared fixtures: a small embedded world (generated once per session) and image-file factories."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qclip.config import load_config
from qclip.data.world_shards import build_world


def tiny_config(**world):
    overrides = ["world.n_pool=48", "world.n_curated=16", "world.n_dense=16", "world.n_val=8",
                 "world.shard_size=16", "world.workers=1"]
    overrides += [f"world.{k}={v}" for k, v in world.items()]
    return load_config(None, overrides)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(tiny_config(), out, progress=False)
    return out


def png_bytes(w: int = 32, h: int = 24, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(w: int = 32, h: int = 24, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
