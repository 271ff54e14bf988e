"""Classifier-free guidance as a wrapper around the U-Net (k-diffusion style: the sampler only sees a model)."""

from __future__ import annotations

import torch

from ..diffusion import x0_from_prediction  # noqa: F401  (re-exported: the noise algebra lives in latentdiff.diffusion)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one (Lin et al. 2023, https://arxiv.org/abs/2305.08891 §3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided


class CFGDenoiser:
    """ε/v prediction under classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).

    `context` holds [uncond; cond] embeddings (2B, T, D) when guidance is on (scale > 1, as diffusers decides),
    else only the cond ones (B, T, D); the U-Net runs once on the doubled batch.

    A self-conditioning U-Net (`config.self_condition`, Chen et al. 2022, https://arxiv.org/abs/2208.04202) is fed
    its previous x0 estimate, per CFG branch; `scheduler` supplies ᾱ_t and the prediction type for that estimate.
    """

    def __init__(self, unet, context: torch.Tensor, scale: float, rescale: float = 0.0, extra_channels: torch.Tensor | None = None,
                 scheduler=None):
        self.unet, self.context, self.scale, self.rescale = unet, context, scale, rescale
        self.extra_channels = extra_channels  # (B, C', h, w) concatenated to the input (inpainting U-Nets)
        self.self_condition = bool(getattr(getattr(unet, "config", None), "self_condition", False))
        self.x0_from = x0_estimator(scheduler) if self.self_condition and scheduler is not None else None
        self.prev_x0: torch.Tensor | None = None  # (B or 2B, C, h, w), the last step's x0 estimate per branch

    @property
    def guided(self) -> bool:
        return self.scale > 1.0

    def _unet(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One U-Net call on (n, C[+C'], h, w), self-conditioned when the U-Net is."""
        if not self.self_condition:
            return self.unet(x, t, self.context)
        out = self.unet(x, t, self.context, x_self_cond=self.prev_x0)  # None on the first step: zeros, as in training
        if self.x0_from is not None:
            self.prev_x0 = self.x0_from(x[:, :out.shape[1]], out, t).detach()
        return out

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.extra_channels is not None:
            x = torch.cat([x, self.extra_channels], dim=1)  # (B, C + C', h, w)
        if not self.guided:
            return self._unet(x, t)
        out = self._unet(torch.cat([x, x]), t)  # (2B, C, h, w)
        uncond, cond = out.chunk(2)
        guided = uncond + self.scale * (cond - uncond)
        return rescale_guidance(guided, cond, self.rescale) if self.rescale > 0 else guided


def x0_estimator(scheduler):
    """(x_t, prediction, t) → x0 for a DDPM-family scheduler (x0_from_prediction at timestep t's ᾱ).

    x_t is the model input (VP scale, after `scale_model_input`); t a timestep, possibly fractional (Euler), rounded.
    """
    alphas = scheduler.alphas_cumprod.float()
    kind = scheduler.config.prediction_type

    def x0(x: torch.Tensor, pred: torch.Tensor, t) -> torch.Tensor:
        i = int(torch.as_tensor(t).float().round().clamp(0, len(alphas) - 1).item())
        return x0_from_prediction(x, pred, alphas[i].to(x.device), kind)
    return x0
