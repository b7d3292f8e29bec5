"""Atomic writes: temp file in the destination folder, fsync, rename. A reader never sees half a file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs should read like any other file


def _mkstemp(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_or_none(path: str | Path) -> Any:
    """A JSON file's content, or None when it is missing or not valid JSON (a fingerprint to compare)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_tree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def commit_dir(staging: str | Path, final: str | Path) -> None:
    """Move a finished staging folder onto its final name (same filesystem, so the rename is atomic).

    An existing `final` is first renamed aside and removed only after the new one is in place, so a crash
    in between leaves either the old or the new dataset, never neither.
    """
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        remove_tree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        remove_tree(old)


class OutputFolderError(ValueError):
    """An output path that qclip will not replace: it holds something qclip did not write."""


def exclusive_lock(path: str | Path, holder: str, busy: str):
    """An exclusive POSIX record lock on `path` for as long as the returned file stays open, with `holder` written
    in it; if another process holds it, OutputFolderError(`busy` with {holder} filled in). A record lock, not
    flock: it belongs to this process alone, so forked workers that outlive a killed run for a moment do not keep
    it, and it goes with the process, so a killed run leaves nothing stale."""
    import fcntl

    key = str(Path(path).resolve())
    if key in _LOCKED:  # record locks do not conflict within one process: a second writer here is refused too
        raise OutputFolderError(busy.format(holder=_LOCKED[key][0]))
    f = open(path, "a+")
    try:
        fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        raise OutputFolderError(busy.format(holder=other)) from None
    f.seek(0)
    f.truncate()
    f.write(holder)
    f.flush()
    if not _LOCKED:  # a clean exit removes the lock files (a killed process leaves ones that hold no lock)
        import atexit

        atexit.register(release_all_locks)
    _LOCKED[key] = (holder, f)
    return f


_LOCKED: dict[str, tuple[str, object]] = {}  # the lock files this process holds -> (holder text, open file)


def holds_lock(path: str | Path) -> bool:
    """Whether this process holds the lock on `path` (exclusive_lock)."""
    return str(Path(path).resolve()) in _LOCKED


def release_lock(f) -> None:
    """Give up a lock `exclusive_lock` returned: its file removed and closed."""
    _LOCKED.pop(str(Path(f.name).resolve()), None)
    Path(f.name).unlink(missing_ok=True)
    f.close()


def release_all_locks() -> None:
    for _, f in list(_LOCKED.values()):
        release_lock(f)
