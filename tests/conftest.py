"""Shared fixtures: a small embedded world (generated once per session), image-file factories, `qclip` run in
this process, and the order tests are handed to the workers in."""
from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from qclip.config import load_config
from qclip.data.world_shards import build_world


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first: pytest-xdist hands tests out in collection order, and a long test started
    last keeps one worker busy while the other idles (the suite's wall time is its slowest worker's)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def qclip_main(*args: str) -> tuple[int, str, str]:
    """`qclip ARGS` run in this process at one torch thread, as the suite's subprocesses run: (exit code, stdout,
    stderr). For a reference run or a re-run that needs no process of its own (nothing kills it): a subprocess
    spends ~15 s importing open_clip, torchvision and timm before it does anything."""
    import torch

    from qclip.cli import main

    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def tiny_config(**world):
    overrides = ["world.n_pool=48", "world.n_curated=16", "world.n_dense=16", "world.n_dev=4", "world.n_val=8",
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


# A tiny open_clip CoCa: random weights, the real generation code path, offline.
TINY_COCA = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}


@pytest.fixture(scope="session")
def coca_dir(tmp_path_factory) -> Path:
    """A model folder holding TINY_COCA with seeded random weights."""
    import torch

    from qclip.captions.captioners import create_captioner
    from qclip.models.checkpoint import save_model_dir

    d = tmp_path_factory.mktemp("coca")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_COCA}))
    torch.manual_seed(0)
    save_model_dir(create_captioner(f"local-dir:{d}").model, TINY_COCA, {}, d)
    return d


def kill_when(p: subprocess.Popen, progress: Callable[[], int], target: int, delay: float,
              timeout: float = 240) -> bool:
    """SIGKILL `p` once progress() >= target, `delay` seconds later; False if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and progress() < target:
        time.sleep(0.02)
    time.sleep(delay)
    if p.poll() is not None:
        return False
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    return True
