"""The one training loop: the VAE, U-Net and decoder stages and LoRA training all step through `train_loop`.

It reads as nanoGPT's: for each optimizer step, the learning rate is a plain function of the step written into the
optimizer (schedule.py), `grad_accum` micro-batches each backpropagate loss / grad_accum (gradients synchronised
across processes at the last one only), the gradients are clipped and the optimizer steps once. Logs, checkpoints
(checkpoints.RunFolder) and samples follow at their intervals; resuming restores the step and nothing else is needed,
because every random draw of a step is a function of (seed, step). What a stage trains and how it saves itself is
the stage's: see `Stage`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from ..errors import LatentDiffError
from .checkpoints import RunFolder
from .schedule import set_lr

log = logging.getLogger(__name__)

LOG_FIELDS = ["step", "loss", "lr", "seconds"]


class Stage(Protocol):
    """What a stage gives the loop: prepared modules and optimizer, a loss per micro-batch, save/load, samples."""

    ddp_modules: list[torch.nn.Module]   # the accelerate-prepared modules whose gradient sync waits for the last micro-batch
    optimizer: torch.optim.Optimizer     # prepared by the same accelerator
    base_lrs: list[float]                # per parameter group; the LR is lr(step) × these

    def parameters(self) -> list[torch.nn.Parameter]: ...       # the trained ones (clipped together)
    def loss(self, step: int, micro: int) -> torch.Tensor: ...  # 0-d, this process's micro-batch
    def after_step(self) -> None: ...                           # e.g. the EMA update
    def save(self, folder: Path, step: int) -> None: ...        # fill a checkpoint folder (state.pt last)
    def load(self, folder: Path) -> int: ...                    # restore one; returns its step
    def sample(self, step: int) -> None: ...                    # grids / validation images (main process only)


@dataclass
class LoopSettings:
    """When the loop logs, checkpoints, samples and stops; the same fields for every stage."""

    max_steps: int
    lr: Callable[[int], float]              # multiplier of the base LRs at optimizer step s (0-based)
    grad_accum: int = 1
    samples_per_step: int = 1               # the global batch (for the progress bar's samples/s)
    log_every: int = 10
    checkpoint_every: int = 0               # 0: no periodic checkpoints
    checkpoint_at_end: bool = True          # also at the last step (the stage reads its weights from there)
    checkpoint_minutes: float = 0.0         # >0: also checkpoint at the first log step this long after the last
    max_minutes: float = 0.0                # >0: stop (with a checkpoint) at the first log step after this long
    sample_every: int = 0                   # 0: samples only at the end when sample_at_end
    sample_at_end: bool = True
    max_grad_norm: float = 0.0              # 0: no clipping
    name: str = "train"                     # progress bar and TensorBoard tag
    tensorboard: bool = False


@dataclass
class LoopResult:
    """What one call of train_loop did."""

    losses: list[float] = field(default_factory=list)  # the logged (all-process mean) losses
    start: int = 0                                      # the step it resumed from (0 when fresh)
    step: int = 0                                       # the step it ended at


def resume_step(stage: Stage, run: RunFolder, resume: str | bool | None) -> int:
    """Load the checkpoint `resume` names (True / "latest" / a folder) and return its step; a fresh run (None/False)
    refuses a folder that already holds a checkpoint and returns 0."""
    if resume:
        return stage.load(run.resolve(resume))
    found = run.latest()
    if found is not None:
        where = run.root if found.parent == run.root else found
        raise LatentDiffError(f"{where} already holds a checkpoint; pass --resume or use another output_dir")
    return 0


def train_loop(stage: Stage, acc, run: RunFolder, s: LoopSettings, *, start: int = 0, resumed: bool = False,
               progress: bool = True) -> LoopResult:
    """Train from `start` to s.max_steps (or the time budget); see the module docstring."""
    result = LoopResult(start=start, step=start)
    logger = run.open_log(LOG_FIELDS, start if resumed else None) if acc.is_main_process else None
    tb = _tensorboard(run.folder / "tb") if s.tensorboard and acc.is_main_process else None
    t0 = last_t = last_ckpt = time.time()
    deadline = t0 + s.max_minutes * 60 if s.max_minutes > 0 else math.inf
    bar = tqdm(total=s.max_steps, initial=start, desc=s.name, unit="step", disable=not (progress and acc.is_main_process))
    window: list[torch.Tensor] = []
    step, stop = start, s.max_steps
    while step < stop:
        lr, losses = optimizer_step(stage, acc, step, s)
        window += losses
        step += 1
        bar.update(1)
        timed = False  # a checkpoint by the clock: a lease that dies midway still leaves one ≤ checkpoint_minutes old
        if (deadline < math.inf or s.checkpoint_minutes > 0) and step % s.log_every == 0 and stop == s.max_steps:
            now = time.time()
            flags = torch.tensor([[now > deadline, now - last_ckpt > s.checkpoint_minutes * 60 > 0]], device=acc.device)
            late, timed = (acc.gather(flags.float()).amax(0) > 0).tolist()  # all processes agree on both
            if late:
                stop = step  # out of time: this step is the last (checkpoint and samples below)
                log.warning("%s: max_minutes=%g reached at step %d", s.name, s.max_minutes, step)
        if step % s.log_every == 0 or step == stop:
            mean = acc.gather(torch.stack(window).mean().reshape(1)).mean().item()
            if not math.isfinite(mean):
                raise LatentDiffError(f"loss became {mean} by step {step}; lower lr or use bf16/fp32")
            now = time.time()
            rate = len(window) / s.grad_accum * s.samples_per_step / max(now - last_t, 1e-9)
            result.losses.append(mean)
            window, last_t = [], now
            bar.set_postfix(loss=f"{mean:.4f}", samples_per_s=f"{rate:.2f}")
            if logger:
                logger.write(step=step, loss=f"{mean:.6f}", lr=f"{lr:.6g}", seconds=f"{now - t0 + logger.seconds_offset:.1f}")
            if tb:
                tb.add_scalar(f"{s.name}/loss", mean, step)
        if (s.checkpoint_every and step % s.checkpoint_every == 0) or (step == stop and s.checkpoint_at_end) or timed:
            last_ckpt = time.time()
            acc.wait_for_everyone()
            if acc.is_main_process:
                run.save(step, lambda tmp: stage.save(tmp, step))
        if acc.is_main_process and ((s.sample_every and step % s.sample_every == 0) or (step == stop and s.sample_at_end)):
            stage.sample(step)
    bar.close()
    acc.wait_for_everyone()
    if tb:
        tb.close()
    result.step = step
    return result


def optimizer_step(stage: Stage, acc, step: int, s: LoopSettings) -> tuple[float, list[torch.Tensor]]:
    """One optimizer step of `stage`: LR = base × s.lr(step), s.grad_accum micro-batches (each backpropagating
    loss / grad_accum; gradients all-reduced at the last one only), clipping, the update, after_step.
    Returns the LR used and the micro-batch losses (0-d, detached, not synchronised)."""
    lr = set_lr(stage.optimizer, stage.base_lrs, s.lr(step))
    losses = []
    for micro in range(s.grad_accum):
        with ExitStack() as sync:
            if micro < s.grad_accum - 1:  # gradients are all-reduced at the last micro-batch only
                for m in stage.ddp_modules:
                    sync.enter_context(acc.no_sync(m))
            loss = stage.loss(step, micro)
            acc.backward(loss / s.grad_accum)
        losses.append(loss.detach().float())  # read at log time: no device sync per step
    if s.max_grad_norm > 0:
        acc.clip_grad_norm_(stage.parameters(), s.max_grad_norm)
    stage.optimizer.step()
    stage.optimizer.zero_grad(set_to_none=True)
    stage.after_step()
    return lr, losses


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder))
    except Exception:  # tensorboard not installed
        return None
