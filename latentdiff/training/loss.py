"""The denoising training objective shared by from-scratch and LoRA training: draws, targets, weighting (the noise
algebra itself is latentdiff.diffusion's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..diffusion import (PREDICTION_TYPES, add_noise, alpha_bar_at, alphas_cumprod, coefficients, snr, target,
                         x0_from_prediction)
from ..errors import LatentDiffError


@dataclass
class LossConfig:
    """How the diffusion loss is formed."""

    prediction_type: str = "epsilon"    # "epsilon" or "v_prediction" (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512)
    min_snr_gamma: float = 0.0          # 0 = off; 5 is typical (Hang et al. 2023, https://arxiv.org/abs/2303.09556)
    noise_offset: float = 0.0           # 0 = off; ~0.05 (https://www.crosslabs.org/blog/diffusion-with-offset-noise)
    self_condition_prob: float = 0.0    # >0: with this probability per batch the model first estimates x0 (no grad)
                                        # and is fed it (Chen et al. 2022, https://arxiv.org/abs/2208.04202); else zeros


class DiffusionLoss:
    """MSE between the U-Net's prediction and the ε or v target at uniformly drawn timesteps."""

    def __init__(self, scheduler_config: dict, config: LossConfig | None = None):
        self.config = config or LossConfig(prediction_type=scheduler_config.get("prediction_type", "epsilon"))
        if self.config.prediction_type not in PREDICTION_TYPES:
            raise LatentDiffError(f"unknown prediction type {self.config.prediction_type!r}")
        self.alphas_cumprod = alphas_cumprod(scheduler_config)  # (T,)
        self.num_timesteps = len(self.alphas_cumprod)

    def _alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return alpha_bar_at(self.alphas_cumprod, t, like.ndim)  # (B, 1, 1, 1) float32

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1-ᾱ_t)), (B, 1, 1, 1) in like's dtype."""
        return coefficients(self._alpha_bar(t, like), like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (latentdiff.diffusion)."""
        return add_noise(x0, noise, self._alpha_bar(t, x0))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε, or v = √ᾱ ε − √(1-ᾱ) x0."""
        return target(self.config.prediction_type, x0, noise, self._alpha_bar(t, x0))

    def x0_from(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 estimate a prediction implies (the sampler's formula, latentdiff.diffusion.x0_from_prediction)."""
        return x0_from_prediction(x_t, pred, self._alpha_bar(t, x_t).to(x_t.dtype), self.config.prediction_type)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights: min-SNR-γ when on, else ones. (B,)"""
        if not self.config.min_snr_gamma:
            return torch.ones(t.shape, device=t.device)
        r = snr(self.alphas_cumprod.to(t.device)[t])
        w = r.clamp(max=self.config.min_snr_gamma) / r
        return w * r / (r + 1) if self.config.prediction_type == "v_prediction" else w

    def __call__(self, model, x0: torch.Tensor, context: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One loss evaluation: draw t and ε, noise x0 (B, C, h, w), predict with `model(x_t, t, context)`."""
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.config.noise_offset:
            noise = noise + self.config.noise_offset * torch.randn((b, x0.shape[1], 1, 1), generator=generator,
                                                                   device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=x0.device)
        x_t = self.add_noise(x0, noise, t)
        if self.config.self_condition_prob > 0:  # model(x_t, t, context, x_self_cond=...) then
            x_self_cond = torch.zeros_like(x0)
            if torch.rand((), generator=generator, device=x0.device).item() < self.config.self_condition_prob:
                with torch.no_grad():
                    x_self_cond = self.x0_from(x_t, model(x_t, t, context, x_self_cond=x_self_cond).to(x0.dtype), t)
            pred = model(x_t, t, context, x_self_cond=x_self_cond)
        else:
            pred = model(x_t, t, context)
        per_sample = F.mse_loss(pred.float(), self.target(x0, noise, t).float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
        return (per_sample * self.weights(t)).mean()
