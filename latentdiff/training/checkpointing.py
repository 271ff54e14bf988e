"""Training state on disk: atomic checkpoints, resume, and a CSV loss log."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..fileio import atomic_write  # noqa: F401  (re-exported: trainers import it from here)
from ..errors import LatentDiffError


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors atomically (contiguous, detached copies)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_training_state(path: str | os.PathLike, state: dict) -> Path:
    """Optimizer, scheduler, step and RNG states (torch pickle of plain tensors/containers) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no training state to resume at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by save_training_state


def check_same_architecture(saved: dict, current: dict, what: str) -> None:
    """Refuse to resume from a checkpoint of another architecture, naming the first differing setting."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise LatentDiffError(f"cannot resume: the checkpoint's {what} has {key}={saved.get(key)!r}, the config says {current.get(key)!r}")


class CSVLog:
    """Append-only CSV of training metrics; survives resume (header written once)."""

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path, self.fields = Path(path), fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))
