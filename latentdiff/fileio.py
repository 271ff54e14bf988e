"""File IO of the low layer: atomic writes (a temp file or folder beside the target, published with the normal mode,
then renamed over it) and YAML/JSON/safetensors readers whose failures are one line naming the file.
Imports nothing of ours but `errors`; yaml, torch and safetensors only inside the functions that need them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LatentDiffError

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


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """`obj` as indented JSON, atomically."""
    import json

    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file's value; a missing or unparsable file is one line naming it."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentDiffError(f"no such {what}: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LatentDiffError(f"{path} is not a readable {what} ({str(e).splitlines()[0]})") from None


def read_yaml(path: str | os.PathLike, *, mapping: bool = True) -> Any:
    """A YAML file's value ({} when empty); a missing, unparsable or (with `mapping`) non-mapping file is one line."""
    import yaml

    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentDiffError(f"no such config file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LatentDiffError(f"{path} is not a readable YAML file: {str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:
        raise LatentDiffError(f"{path} is not a readable YAML file: not valid YAML ({str(e).splitlines()[0]})") from None
    if value is None:
        value = {}
    if mapping and not isinstance(value, dict):
        raise LatentDiffError(f"{path} does not hold a YAML mapping")
    return value


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file; a missing or damaged file is one line naming it."""
    return read_safetensors_with_metadata(path, device)[0]


def read_safetensors_with_metadata(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a .safetensors file and its header metadata ({} when none); one line when it cannot be read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no such weights file: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises SafetensorError/OSError for truncated or foreign files
        raise LatentDiffError(f"{path} is not a readable .safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
