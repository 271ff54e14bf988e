"""File permissions for atomic writes: temp files and folders are private (0600/0700) until published."""

from __future__ import annotations

import os


def publish(path: str | os.PathLike) -> None:
    """Give a finished temp file or folder the mode a plain open()/mkdir() would have (0666/0777 less umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)
