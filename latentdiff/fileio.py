"""Atomic file writes: a temp file in the target folder, published with the normal mode, then renamed over the target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def publish(path: str | os.PathLike) -> None:
    """Give a finished temp file or folder the mode a plain open()/mkdir() would have (0666/0777 less umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call `write(tmp_path)` and move the result over `path` only when it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
