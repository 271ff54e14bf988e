"""Exponential moving average of model weights, with a warm-up so early averages are not stuck at init."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of a model's floating-point parameters: θ_ema ← d·θ_ema + (1−d)·θ (fp32)."""

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True):
        self.decay = decay                   # the final decay
        self.warmup = warmup                 # d_t = min(decay, (1 + t) / (10 + t)), as in LDM/diffusers EMAModel
        self.step = 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        """Decay used at the next update."""
        return min(self.decay, (1 + self.step) / (10 + self.step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights toward the model's current weights."""
        d = self.current_decay()
        state = model.state_dict()
        keys = [k for k in self.shadow if k in state]
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].detach().float() for k in keys], 1.0 - d)  # one launch group on GPU
        self.step += 1

    def to(self, device: torch.device | str) -> "EMA":
        """Keep the shadow weights beside the model's (the update reads both)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the shadow weights into model (in the model's dtypes)."""
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], step: int) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        self.step = step
