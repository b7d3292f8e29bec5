"""What every stage writes beside its outputs: the resolved config, package versions, git commit, command."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .atomic import OutputFolderError, atomic_write_json, atomic_write_text, exclusive_lock, holds_lock
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


# the file that marks a folder as one qclip writes into (its outputs, config.yaml and run.json among them)
OWNER_MARKER = ".qclip"
FOLDER_LOCK = ".qclip.lock"  # the one-writer lock of a run folder (hold_output_folder)
QCLIP_FILES = (OWNER_MARKER, FOLDER_LOCK)  # qclip's own files in a run folder, never a stage's output


def written_by_qclip(folder: Path) -> bool:
    """`folder` holds qclip's marker, or (folders from before the marker) a run.json in qclip's own format."""
    if (folder / OWNER_MARKER).is_file():
        return True
    try:
        record = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"stage", "versions", "git_commit", "hardware"} <= set(record)


def check_output_folder(out: str | Path) -> None:
    """The rule every command that writes a folder follows: qclip writes (and later replaces or deletes) only in a
    folder it made or marked. A new or empty folder is fine, and so is one of qclip's; any other folder with files
    in it is the user's, and is refused before any work, untouched."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not written_by_qclip(out):
        mine = sorted(p.name for p in out.iterdir())[:4]
        raise OutputFolderError(f"--out '{out}' holds files qclip did not write ({', '.join(mine)}, ...): qclip "
                                f"writes only into new or empty folders, or ones it made. Choose another --out")


def claim_output_folder(out: str | Path, command: str) -> Path:
    """`check_output_folder`, then the folder made and marked as qclip's (before any work, so a killed run's
    partial outputs are recognised as qclip's when it is re-run)."""
    out = Path(out)
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / OWNER_MARKER
    if not marker.is_file():
        atomic_write_text(marker, f"written by qclip {command}; qclip replaces and deletes only what it wrote here\n")
    return out


def hold_output_folder(out: str | Path, command: str) -> None:
    """One writer per output folder: an exclusive lock on OUT/.qclip.lock for this process's lifetime, naming the
    holder (host, pid, command, start). A second qclip command on the same folder fails at once, naming the first;
    the lock goes with its process, so a killed or crashed run leaves no stale lock behind."""
    path = Path(out) / FOLDER_LOCK
    if holds_lock(path):  # this process holds it already (a second command run from the same Python process)
        return
    exclusive_lock(path, f"qclip {command} (host {platform.node()}, pid {os.getpid()}, since "
                         f"{time.strftime('%H:%M:%S')}: {' '.join(sys.argv[1:])[:200]})",
                   f"'{out}' is being written by {{holder}}; wait for it to finish or choose another --out (two "
                   f"writers would mix their runs in one folder)")


def take_output_folder(out: str | Path, command: str) -> Path:
    """What a command does first with its output folder: claim it (refusing a user's) and hold its one-writer lock.
    Under torchrun rank 0 alone claims and locks (the ranks write one run together)."""
    from .distributed import rank

    if rank() != 0:
        return Path(out)
    out = claim_output_folder(out, command)
    hold_output_folder(out, command)
    return out
