"""The noise algebra of DDPM-family diffusion in one place: ᾱ_t, noising, the ε/v targets, and x0 from a prediction.

The training loss (training/loss.py) and sampling (pipelines/guidance.py's self-conditioning) both use it, as
lucidrains' GaussianDiffusion and k-diffusion's denoiser wrappers keep one owner of this math. With ᾱ = ᾱ_t:

    x_t = √ᾱ x0 + √(1−ᾱ) ε                      (Ho et al. 2020, https://arxiv.org/abs/2006.11239)
    v   = √ᾱ ε − √(1−ᾱ) x0                      (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512)
    x0  = (x_t − √(1−ᾱ) ε̂)/√ᾱ   or   √ᾱ x_t − √(1−ᾱ) v̂

Low layer: imports nothing of ours but errors; diffusers only inside `alphas_cumprod` (for its exact beta schedules).
"""

from __future__ import annotations

import torch

from .errors import LatentDiffError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1 (float32, (T,)) of a diffusers scheduler config, exactly as DDPMScheduler computes it."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config({k: v for k, v in scheduler_config.items() if not k.startswith("_")})
    return sched.alphas_cumprod.float()


def alpha_bar_at(alphas: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """ᾱ at integer timesteps t (B,), shaped (B, 1, …) to broadcast over a tensor of `ndim` dimensions (float32)."""
    return alphas.to(t.device)[t].view(-1, *([1] * (ndim - 1)))


def coefficients(alpha_bar: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ, √(1−ᾱ)) computed in ᾱ's precision, then cast to `dtype`."""
    return alpha_bar.sqrt().to(dtype), (1 - alpha_bar).sqrt().to(dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ x0 + √(1−ᾱ) ε."""
    a, s = coefficients(alpha_bar, x0.dtype)
    return a * x0 + s * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ ε − √(1−ᾱ) x0."""
    a, s = coefficients(alpha_bar, x0.dtype)
    return a * noise - s * x0


def target(kind: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What a model of prediction type `kind` is trained to output: ε, or v."""
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return v_target(x0, noise, alpha_bar)
    raise LatentDiffError(f"unknown prediction type {kind!r}")


def x0_from_prediction(x_t: torch.Tensor, pred: torch.Tensor, alpha_bar: torch.Tensor, kind: str) -> torch.Tensor:
    """The x0 a prediction implies at ᾱ (a scalar or (B, 1, 1, 1)): ε: (x − √(1−ᾱ) ε)/√ᾱ; v: √ᾱ x − √(1−ᾱ) v."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return a * x_t - s * pred if kind == "v_prediction" else (x_t - s * pred) / a


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ / (1 − ᾱ)."""
    return alpha_bar / (1 - alpha_bar)
