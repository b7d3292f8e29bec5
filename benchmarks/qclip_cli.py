"""Run a `qclip` command as a user would (a fresh process, the repository as working folder), for the
benchmark scripts beside this one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def qclip(*args: str) -> None:
    """`python -m qclip ARGS...`; raises CalledProcessError when it fails."""
    subprocess.run([sys.executable, "-m", "qclip", *args], check=True, cwd=ROOT)
