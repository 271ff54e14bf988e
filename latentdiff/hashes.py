"""Content hashes that A1111 writes and reads: a model's `Model hash` and a LoRA's `Lora hashes` entry."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from .fileio import atomic_write

_CACHE: dict[str, str] = {}  # "kind path size mtime_ns" → hex, in memory and (as A1111's cache.json) on disk


def cache_file() -> Path:
    """~/.cache/latentdiff/hashes.json (or under $XDG_CACHE_HOME): a multi-GB checkpoint is hashed once, not per run."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentdiff" / "hashes.json"


def _load_disk_cache() -> None:
    try:
        _CACHE.update({k: v for k, v in json.loads(cache_file().read_text()).items() if isinstance(v, str)})
    except (OSError, ValueError, AttributeError):
        pass  # no cache yet, or an unreadable one: hash again


def _cached(kind: str, path: Path, compute) -> str:
    """compute(path), remembered while the file's size and mtime stay the same (big files on disk too)."""
    st = path.stat()
    key = f"{kind} {path.resolve()} {st.st_size} {st.st_mtime_ns}"
    if key not in _CACHE and st.st_size >= DISK_CACHE_MIN_BYTES:
        _load_disk_cache()
    if key not in _CACHE:
        _CACHE[key] = compute(path)
        if st.st_size >= DISK_CACHE_MIN_BYTES:
            big = {k: v for k, v in _CACHE.items() if int(k.rsplit(" ", 2)[1]) >= DISK_CACHE_MIN_BYTES}
            try:
                atomic_write(cache_file(), lambda tmp: Path(tmp).write_text(json.dumps(big, indent=0)))
            except OSError:
                pass  # a read-only home: the hash is still right, only not remembered
    return _CACHE[key]


DISK_CACHE_MIN_BYTES = 64 << 20  # smaller files hash faster than the cache file is read


def _sha256(path: Path, offset: int = 0) -> str:
    """sha256 hex of the file's bytes from `offset` on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The full sha256 hex of a file (cached per size and mtime)."""
    return _cached("file", Path(path), _sha256)


def folder_files(folder: Path) -> list[Path]:
    """The files a folder hash covers: every file below it, hidden names (`.cache`, `.gitattributes`) left out."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def model_hash(path: str | os.PathLike) -> str:
    """A1111's `Model hash`: sha256[:10] of a checkpoint file. For a diffusers folder (A1111 has no rule for one) it is
    sha256[:10] of the lines `relative/path\\0<sha256 of the file>\\n` over `folder_files`, sorted by path: weights,
    configs and tokenizer files all count, so any change that can change an image changes the hash."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)[:10]
    lines = "".join(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n" for f in folder_files(p))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:10]


def _safetensors_body_sha256(path: Path) -> str:
    """sha256 of a .safetensors file after its 8-byte length and JSON header (kohya's and A1111's LoRA hash)."""
    with open(path, "rb") as f:
        head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    return _sha256(path, offset=8 + n)


def _safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a .safetensors header, {} when there is none or it does not parse."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100 << 20:
                return {}
            header = json.loads(f.read(n))
        return header.get("__metadata__") or {}
    except (OSError, ValueError, struct.error):
        return {}


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's `Lora hashes` entry: the first 12 hex of the `sshs_model_hash` a kohya file carries in its metadata, else
    of sha256 over the bytes after the safetensors header (the tensors alone; metadata edits do not change it); whole
    file for other formats."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        return sha256_file(p)[:12]
    recorded = str(_safetensors_metadata(p).get("sshs_model_hash", ""))
    if len(recorded) >= 12 and all(c in "0123456789abcdef" for c in recorded.lower()):
        return recorded[:12].lower()
    return _cached("lora", p, _safetensors_body_sha256)[:12]


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's `Model hash` before 2023 (8 hex): sha256 of the 64 KiB at offset 1 MiB of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        h.update(f.read(0x10000))
    return h.hexdigest()[:8]
