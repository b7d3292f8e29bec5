"""What every stage writes beside its outputs: the resolved config, package versions, git commit, command."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, atomic_write_text
from .config import dump_yaml

_PACKAGES = ("qclip", "torch", "torchvision", "open_clip_torch", "timm", "webdataset", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """What the run computed on. Floating-point results are reproducible on the same hardware, not across it:
    oneDNN / cuDNN pick kernels by CPU features and GPU, so a seed's numbers can differ between machines."""
    import torch

    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the qclip source tree (with '+dirty' for uncommitted changes), or 'unknown' outside git. Read once
    per process: a long run records the tree its code was loaded from, not one committed while it ran."""
    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_info(out_dir: str | Path, cfg: Any, stage: str, extra: dict | None = None) -> dict:
    """Write `config.yaml` and `run.json` into `out_dir` (atomically) and return the run record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "stage": stage,
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "hardware": hardware(),
        "seed": getattr(cfg, "seed", None),
        **(extra or {}),
    }
    atomic_write_text(out_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out_dir / "run.json", record)
    return record
