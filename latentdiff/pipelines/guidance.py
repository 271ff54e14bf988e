"""Classifier-free guidance as a wrapper around the U-Net (k-diffusion style: the sampler only sees a model)."""

from __future__ import annotations

import torch


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one (Lin et al. 2023, https://arxiv.org/abs/2305.08891 §3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


class CFGDenoiser:
    """ε/v prediction under classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).

    `context` holds [uncond; cond] embeddings (2B, T, D) when guidance is on (scale > 1, as diffusers decides),
    else only the cond ones (B, T, D); the U-Net runs once on the doubled batch.
    """

    def __init__(self, unet, context: torch.Tensor, scale: float, rescale: float = 0.0, extra_channels: torch.Tensor | None = None):
        self.unet, self.context, self.scale, self.rescale = unet, context, scale, rescale
        self.extra_channels = extra_channels  # (B, C', h, w) concatenated to the input (inpainting U-Nets)

    @property
    def guided(self) -> bool:
        return self.scale > 1.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.extra_channels is not None:
            x = torch.cat([x, self.extra_channels], dim=1)  # (B, C + C', h, w)
        if not self.guided:
            return self.unet(x, t, self.context)
        out = self.unet(torch.cat([x, x]), t, self.context)  # (2B, C, h, w)
        uncond, cond = out.chunk(2)
        guided = uncond + self.scale * (cond - uncond)
        return rescale_guidance(guided, cond, self.rescale) if self.rescale > 0 else guided
