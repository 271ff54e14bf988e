"""The denoising training objective shared by from-scratch and LoRA training: noise, targets, weighting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
        from diffusers import DDPMScheduler

        self.config = config or LossConfig(prediction_type=scheduler_config.get("prediction_type", "epsilon"))
        if self.config.prediction_type not in ("epsilon", "v_prediction"):
            raise LatentDiffError(f"unknown prediction type {self.config.prediction_type!r}")
        sched = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
        self.num_timesteps = sched.config.num_train_timesteps
        self.alphas_cumprod = sched.alphas_cumprod.float()  # (T,)

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.alphas_cumprod.to(t.device)[t].view(-1, *([1] * (like.ndim - 1)))  # (B, 1, 1, 1)
        return ac.sqrt().to(like.dtype), (1 - ac).sqrt().to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε."""
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        a, s = self._coefs(t, x0)
        return a * noise - s * x0  # v = √ᾱ ε − √(1-ᾱ) x0

    def x0_from(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The x0 estimate a prediction implies (the sampler's formula, pipelines.guidance.x0_from_prediction)."""
        from ..pipelines.guidance import x0_from_prediction

        ac = self.alphas_cumprod.to(t.device)[t].view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)  # (B, 1, 1, 1)
        return x0_from_prediction(x_t, pred, ac, self.config.prediction_type)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights: min-SNR-γ when on, else ones. (B,)"""
        if not self.config.min_snr_gamma:
            return torch.ones(t.shape, device=t.device)
        ac = self.alphas_cumprod.to(t.device)[t]
        snr = ac / (1 - ac)
        w = snr.clamp(max=self.config.min_snr_gamma) / snr
        return w * snr / (snr + 1) if self.config.prediction_type == "v_prediction" else w

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
