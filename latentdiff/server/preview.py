"""Cheap live previews (A1111's "Approx cheap"): one linear map latent channels → RGB, fitted per model from its VAE.

At load time we decode a few random latents with the model's own VAE, average the decoded pixels over each
latent cell (8×8 pixels for SD's VAE), and solve least squares for RGB = latent · W + b. A preview then costs
one (C×3) matrix product per latent pixel — no VAE — and works for any latent space we load (our default
model, SD1, SD2, SDXL) without a table of constants per family.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class LatentPreview:
    """RGB ≈ latents · weight + bias per latent pixel; values in [0, 1]."""

    weight: torch.Tensor    # (C, 3)
    bias: torch.Tensor      # (3,)
    factor: int             # pixels per latent pixel (the VAE's scale factor)
    fit_error: float        # RMS error of the fit on its own samples, in [0, 1] units

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, h, w) latents → (h, w, 3) RGB in [0, 1]."""
        x = latents.detach().float().cpu().permute(1, 2, 0)  # (h, w, C)
        return (x @ self.weight + self.bias).clamp(0, 1)       # (h, w, 3)

    def image(self, latents: torch.Tensor) -> Image.Image:
        """A PIL preview at the final image's size (nearest-neighbour upscaled)."""
        rgb = (self.rgb(latents) * 255).round().to(torch.uint8).numpy()
        im = Image.fromarray(rgb)
        return im.resize((im.width * self.factor, im.height * self.factor), Image.NEAREST)

    def base64_png(self, latents: torch.Tensor) -> str:
        buf = io.BytesIO()
        self.image(latents).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()


@torch.no_grad()
def fit_preview(pipe, samples: int = 4, size: int = 16, seed: int = 0) -> LatentPreview:
    """Decode `samples` random (C, size, size) latents with the pipeline's VAE and fit the linear map."""
    c, f = pipe.vae.config.latent_channels, pipe.vae_scale_factor
    gen = torch.Generator("cpu").manual_seed(seed)
    # Random latents of the sampler's scale, with some low-frequency structure so the colours vary smoothly.
    coarse = torch.randn((samples, c, size // 4, size // 4), generator=gen)
    latents = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    latents = latents + 0.5 * torch.randn((samples, c, size, size), generator=gen)  # (N, C, s, s)
    images = pipe.decode(latents.to(pipe.device, pipe.dtype)).float().cpu()  # (N, 3, s·f, s·f)
    target = F.avg_pool2d(images, f)                                          # (N, 3, s, s)
    x = latents.permute(0, 2, 3, 1).reshape(-1, c)                            # (N·s·s, C)
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)                             # (N·s·s, 3)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)                         # (N·s·s, C+1)
    sol = torch.linalg.lstsq(x1, y).solution                                  # (C+1, 3)
    err = float(((x1 @ sol - y) ** 2).mean().sqrt())
    return LatentPreview(sol[:c].contiguous(), sol[c].contiguous(), f, err)
