"""Print pip's index settings as uv flags: uv does not read pip.conf, and a machine whose packages come from local
wheel folders or extra indexes (find-links, extra-index-url, index-url, constraint in `pip config list`, files or
PIP_* variables) must resolve the same releases under uv as under pip. Used by the Makefile; prints nothing where
pip has none of these settings."""
from __future__ import annotations

import subprocess
import sys

FLAGS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "index-url": "--index-url",
         "constraint": "--constraints"}


def main() -> None:
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return
    seen: list[tuple[str, str]] = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        flag = FLAGS.get(key.rsplit(".", 1)[-1])
        if flag is None:
            continue
        for v in value.strip().strip("'\"").split():
            if (flag, v) not in seen:
                seen.append((flag, v))
    # pip takes the newest release over every index; uv's default takes the first index that has the package
    print(" ".join(f"{f} {v}" for f, v in seen) + (" --index-strategy unsafe-best-match" if seen else ""))


if __name__ == "__main__":
    main()
