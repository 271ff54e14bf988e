"""Outputs of frozen encoders computed once and kept on disk (VAE latents per image, CLIP embeddings per caption).

A `TensorCache` is one safetensors file of tensors named by the hash of a string key, tied to a fingerprint of the
model that produced them: a different model (or config) starts a fresh file; keys not yet cached are computed in
batches and the file is rewritten atomically, so an interrupted run keeps what was already stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..errors import LatentDiffError
from ..fileio import save_safetensors


def module_fingerprint(module: torch.nn.Module, extra: object = None) -> str:
    """A cheap identity for a model's weights: sha256 over each tensor's name, shape and float64 sum and sum of squares."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in module.state_dict().items():
            t64 = t.detach().double()
            h.update(f"{name}{tuple(t.shape)}{t64.sum().item():.10e}{t64.square().sum().item():.10e}".encode())
    return h.hexdigest()[:16]


def key_name(key: str) -> str:
    """Tensor name for any string key (captions, paths) inside the safetensors file."""
    return hashlib.sha1(key.encode()).hexdigest()


class TensorCache:
    """Tensors keyed by strings in one safetensors file, reused while the producing model's fingerprint matches."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint
        self.tensors: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            try:
                with safe_open(str(self.path), framework="pt", device="cpu") as f:
                    if (f.metadata() or {}).get("fingerprint") == fingerprint:
                        self.tensors = {k: f.get_tensor(k) for k in f.keys()}
            except Exception:  # a damaged cache file is rebuilt, never trusted
                self.tensors = {}

    def __contains__(self, key: str) -> bool:
        return key_name(key) in self.tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key_name(key)]

    def fill(self, keys: Sequence[str], compute: Callable[[list[str]], Sequence[torch.Tensor]], *, batch_size: int = 8,
             desc: str = "cache", progress: bool = True, group: Callable[[str], object] | None = None,
             save_every: int = 256) -> int:
        """Compute the missing keys in batches (grouped by `group(key)` so shapes agree) and save; returns how many."""
        missing = list(dict.fromkeys(k for k in keys if k not in self))
        if not missing:
            return 0
        groups: dict[object, list[str]] = {}
        for k in missing:
            groups.setdefault(group(k) if group else None, []).append(k)
        batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
        for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False), 1):
            out = compute(batch)
            if len(out) != len(batch):
                raise LatentDiffError(f"{desc}: computed {len(out)} tensors for {len(batch)} keys")
            for k, t in zip(batch, out):
                self.tensors[key_name(k)] = t.detach().to("cpu").contiguous()
            if i % save_every == 0 or i == len(batches):  # an interrupted run keeps what it has computed
                save_safetensors(self.tensors, self.path, metadata={"fingerprint": self.fingerprint})
        return len(missing)
