"""A training run on disk, the same for every stage: `checkpoints/step-N` folders plus `latest`, pruned; one `log.csv`.

    <stage folder>/checkpoints/step-000200/   written to a temp folder, then renamed (never half-written)
    <stage folder>/checkpoints/latest          → the newest complete step-N (a relative symlink)
    <stage folder>/log.csv                     one row per log step; a resumed run drops the rows it redoes

What a checkpoint holds is the stage's business (weights, EMA, adapter, optimizer); `state.pt` is written last and
marks a folder complete. Runs written before this layout (`checkpoint/`, `loss.csv`) are still read, with a notice.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import LatentDiffError
from ..fileio import atomic_folder, atomic_write

log = logging.getLogger(__name__)

STATE = "state.pt"


def save_training_state(path: str | os.PathLike, state: dict) -> Path:
    """Optimizer, step and RNG states (torch pickle of plain tensors/containers) atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | os.PathLike) -> dict:
    """The dict save_training_state wrote; one line when there is none."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no training state to resume at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by save_training_state


def check_same_architecture(saved: dict, current: dict, what: str) -> None:
    """Refuse to resume from a checkpoint of another architecture, naming the first differing setting."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise LatentDiffError(f"cannot resume: the checkpoint's {what} has {key}={saved.get(key)!r}, the config says {current.get(key)!r}")


class RunFolder:
    """The checkpoints and the log of one stage in `folder`."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        self.folder, self.keep = Path(folder), keep
        self.root = self.folder / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.folder / "log.csv"

    def complete(self) -> list[Path]:
        """The complete step-N folders, oldest first."""
        return sorted(p for p in self.root.glob("step-*") if (p / STATE).is_file() and not p.is_symlink())

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or the old layout's `checkpoint/` folder (with a notice), or None."""
        done = self.complete()
        if done:
            return done[-1]
        old = self.folder / "checkpoint"
        if (old / STATE).is_file():
            log.warning("note: reading the old checkpoint layout %s; new checkpoints go to %s", old, self.root)
            return old
        return None

    def resolve(self, where: str | bool) -> Path:
        """`--resume` → a checkpoint folder: True or "latest" is the newest here; else a step-N folder (or its parent)."""
        if where is True or where == "latest":
            found = self.latest()
            if found is None:
                raise LatentDiffError(f"--resume: no checkpoint in {self.root}")
            return found
        path = Path(where)
        if (path / STATE).is_file():
            return path
        if (path / "checkpoints").is_dir() or (path / "checkpoint").is_dir():
            return RunFolder(path).resolve("latest")
        raise LatentDiffError(f"--resume: {path} is not a checkpoint folder (no {STATE} in it)")

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """`write(tmp_folder)` fills a new checkpoints/step-N atomically; `latest` then points at it; old ones are pruned."""
        final = self.root / f"step-{step:06d}"
        with atomic_folder(final) as tmp:
            write(tmp)
        link = self.root / "latest"
        tmp_link = self.root / f".latest.{os.getpid()}"
        tmp_link.unlink(missing_ok=True)
        os.symlink(final.name, tmp_link)
        os.replace(tmp_link, link)
        done = self.complete()
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def open_log(self, fields: list[str], resume_step: int | None) -> "CSVLog":
        """log.csv (the old name loss.csv is taken over when resuming a run written before it)."""
        old = self.folder / "loss.csv"
        if resume_step is not None and not self.log_path.is_file() and old.is_file():
            log.warning("note: %s is now %s", old.name, self.log_path.name)
            old.rename(self.log_path)
        return CSVLog(self.log_path, fields, resume_step)


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
            if old and old[0][: len(fields)] == fields[: len(old[0])]:
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
