"""Atomic writes: a temp file (or folder) beside the target, published with the normal mode, then renamed over it.
Imports nothing of ours (the low layer); torch and safetensors only inside save_safetensors."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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


@contextmanager
def atomic_folder(path: str | os.PathLike, *, prefix: str = "") -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; if the block succeeds it takes `path`'s place, else it is deleted.

    An old folder or file at `path` is renamed aside first and removed after the swap, so `path` is never half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{prefix}"))
    try:
        yield tmp
        publish(tmp)
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors atomically (contiguous, detached copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
