"""The learning rate as a plain function of the optimizer step, written into the optimizer before each step.

As nanoGPT's `get_lr(iter_num)`: no scheduler object steps alongside the optimizer, so gradient accumulation,
several processes (accelerate steps a prepared scheduler once per process) and `--resume` (the step is the only
state) cannot knock the rate out of step. Imports nothing heavy; both training loops use it.
"""

from __future__ import annotations

import math

# "wsd" is the from-scratch recipe's warm-up-stable-decay; the other four are diffusers' get_scheduler names with
# diffusers' formulas (their warm-up starts at 0, wsd's at 1/warmup), so a LoRA config means what it means there.
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "wsd")


def lr_factor(step: int, kind: str = "wsd", warmup: int = 0, total: int = 0, decay: int = 0) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based) of `total`."""
    if kind == "constant":
        return 1.0
    if kind == "wsd":  # https://arxiv.org/abs/2404.06395: linear warm-up, constant, linear decay to 0 over the last `decay`
        f = min(1.0, (step + 1) / max(1, warmup))
        if decay > 0 and step >= total - decay:
            f *= max(0.0, (total - step) / decay)
        return f
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":  # half a cosine period, as diffusers' get_cosine_schedule_with_warmup
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown LR schedule {kind!r}; one of {', '.join(SCHEDULES)}")


def set_lr(optimizer, base_lrs: list[float], factor: float) -> float:
    """Write base × factor into each parameter group; returns the first group's rate (for the log)."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
    return base_lrs[0] * factor
