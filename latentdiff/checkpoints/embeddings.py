"""Textual-inversion embeddings (Gal et al. 2022, https://arxiv.org/abs/2208.01618) from the files users share.

Formats, as A1111 and diffusers read them:
    A1111 .safetensors           {"emb_params": (n, D)}
    A1111 .pt (pickle)           {"string_to_param": {"*": (n, D)}, "name": ..., "step": ...}  (only with allow_pickle,
                                 then torch.load(weights_only=True))
    diffusers learned_embeds     {"<token>": (D,) or (n, D)}  (.safetensors, or .bin with allow_pickle)
    SDXL pairs                   {"clip_l": (n, 768), "clip_g": (n, 1280)}  (one set per text encoder)
A prompt uses an embedding by its file stem (A1111's name); a diffusers `learned_embeds.*` takes its folder's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LatentDiffError
from .loader import read_safetensors

SUFFIXES = (".safetensors", ".pt", ".bin")
PICKLES = (".pt", ".bin")


@dataclass
class Embedding:
    """One textual-inversion file: its prompt name and vectors per text encoder ("" for a one-encoder file)."""

    name: str
    path: Path
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # "" | "clip_l" | "clip_g" → (n, D)

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_encoder(self, width: int, key: str = "") -> torch.Tensor | None:
        """The vectors (n, width) for a text encoder of this width: the file's own, or its `key` half of an SDXL pair."""
        v = self.vectors.get(key) if key else self.vectors.get("")  # an SDXL pair fits no SD1/SD2 encoder, as in A1111
        if v is None and key:
            v = self.vectors.get("")
        return v if v is not None and v.shape[-1] == width else None

    @property
    def hash(self) -> str:
        """A1111's `TI hashes` entry: the first 12 hex digits of the file's sha256."""
        from ..hashes import sha256_file

        return sha256_file(self.path)[:12]


def _vectors(value, path: Path, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        raise LatentDiffError(f"{path}: {what} is not a (vectors, width) float tensor")
    return value.detach().float().reshape(-1, value.shape[-1])  # (n, D)


def read_embedding(path: str | os.PathLike, *, allow_pickle: bool = False, name: str | None = None) -> Embedding:
    """One embedding file in any of the formats above; one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no such embedding file: {path}")
    if path.suffix in PICKLES:
        if not allow_pickle:
            raise LatentDiffError(f"{path} is a pickle; pass --allow-pickle (allow_pickle=True) to load it with weights_only=True")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise LatentDiffError(f"{path} could not be read as a weights-only pickle ({str(e).splitlines()[0][:120]})") from None
    elif path.suffix == ".safetensors":
        data = read_safetensors(path)
    else:
        raise LatentDiffError(f"{path}: an embedding is a .safetensors, .pt or .bin file")
    if name is None:
        name = path.parent.name if path.stem.startswith("learned_embeds") else path.stem
    if not isinstance(data, dict) or not data:
        raise LatentDiffError(f"{path} holds no embedding")
    if "clip_l" in data and "clip_g" in data:  # SDXL: one set per encoder, same vector count
        vectors = {k: _vectors(data[k], path, k) for k in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise LatentDiffError(f"{path}: clip_l and clip_g hold different vector counts")
    elif "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise LatentDiffError(f"{path}: string_to_param holds no vectors")
        vectors = {"": _vectors(next(iter(params.values())), path, "string_to_param")}
    elif "emb_params" in data:  # A1111 .safetensors
        vectors = {"": _vectors(data["emb_params"], path, "emb_params")}
    elif len(data) == 1:  # diffusers learned_embeds: {token: vectors}
        vectors = {"": _vectors(next(iter(data.values())), path, "its one tensor")}
    else:
        raise LatentDiffError(f"{path} is not a textual-inversion embedding (keys {', '.join(sorted(map(str, data))[:4])})")
    return Embedding(name, path, vectors)


def read_embeddings(folder: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, Embedding]:
    """Every embedding under a folder (A1111's embeddings folder, subfolders included), by prompt name.

    Pickles are skipped unless allow_pickle; two files with one name: the first in sorted path order wins, as in A1111.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LatentDiffError(f"embeddings folder does not exist: {folder}")
    out: dict[str, Embedding] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        if path.suffix in PICKLES and not allow_pickle:
            continue
        emb = read_embedding(path, allow_pickle=allow_pickle)
        out.setdefault(emb.name, emb)
    return out


def vectors_for(embeddings: dict[str, Embedding], width: int, key: str = "") -> dict[str, torch.Tensor]:
    """{name: (n, width)} of the embeddings that fit a text encoder of this width (SDXL: key "clip_l" or "clip_g")."""
    out = {}
    for name, emb in embeddings.items():
        v = emb.for_encoder(width, key)
        if v is not None:
            out[name] = v
    return out


def used_in(embeddings: dict[str, Embedding], texts: list[str]) -> list[Embedding]:
    """The embeddings whose name appears in any of the texts (for A1111's `TI hashes`)."""
    return [e for name, e in embeddings.items() if any(name in t for t in texts)]
