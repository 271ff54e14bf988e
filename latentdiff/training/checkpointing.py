"""Training state on disk: atomic checkpoints, resume, and a CSV loss log."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from ..errors import LatentDiffError
from ..fileio import atomic_write


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
    """CSV of training metrics, one row per log step, that follows the run's checkpoints.

    A fresh run (`resume_step` None) starts the file anew. A resumed run keeps the rows up to the checkpoint's step
    and drops the later ones it is about to redo, so no step appears twice; `seconds_offset` is the time logged at
    that step, so a "seconds" column keeps counting from where the run left off.
    """

    def __init__(self, path: str | os.PathLike, fields: list[str], resume_step: int | None = None):
        self.path, self.fields, self.seconds_offset = Path(path), fields, 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[list[str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                old = list(csv.reader(f))
            if old and old[0] == fields:
                rows = [r for r in old[1:] if r and int(r[0]) <= resume_step]
        if rows and "seconds" in fields and rows[-1][fields.index("seconds")]:
            self.seconds_offset = float(rows[-1][fields.index("seconds")])

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([fields] + rows)

        atomic_write(self.path, write)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))
