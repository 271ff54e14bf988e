"""An input image as the sampler's start, shared by img2img, inpaint and the hires fix: strength → the timesteps kept,
VAE encoding with each image's generator, per-generator noise."""

from __future__ import annotations

import torch

from ..errors import LatentDiffError


def check_strength(strength: float) -> float:
    """Strength is the fraction of the schedule re-run: 1 redraws from (almost) pure noise, near 0 keeps the input."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise LatentDiffError(f"strength must be in (0, 1], got {strength}")
    return float(strength)


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that `strength` keeps (diffusers' get_timesteps); sets the scheduler's begin index."""
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    if kept < 1:
        raise LatentDiffError(f"strength {strength:g} × {num_inference_steps} steps leaves no denoising step; "
                              "raise the strength or the steps")
    start = (num_inference_steps - kept) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


@torch.no_grad()
def vae_encode(vae, images: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → scaled latents (B, C, h, w), sampling each posterior with its image's generator."""
    cfg = vae.config
    images = images.to(vae.device, vae.dtype)
    latents = torch.cat([vae.encode(images[i : i + 1]).latent_dist.sample(g) for i, g in enumerate(generators)])
    if getattr(cfg, "shift_factor", None):
        latents = latents - cfg.shift_factor
    return latents * cfg.scaling_factor  # (B, C, h, w)


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One (1, *shape[1:]) float32 Gaussian draw per generator, stacked: (B, C, h, w)."""
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators])
