"""A1111's hires fix: draw at the base size, upscale, then redraw at the large size as img2img.

The upscale is in latent space (A1111's "Latent" upscalers: torch interpolation of the first pass's latents) or in
pixels (the first pass decoded to 8-bit, resized with PIL, encoded again by the VAE), as A1111's sample_hr_pass does.
The second pass starts from fresh noise drawn from each image's own seed at the new size and runs exactly `steps`
denoising steps (A1111: the last `steps` of a schedule of ⌈steps / strength⌉).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import LatentDiffError
from ..sampler_names import our_name
from .base import Draw, PipelineBase, PipelineOutput, generators
from .image_latents import check_strength, draw_noise, strength_timesteps, vae_encode
from .request import Request

# our name → (A1111's "Hires upscaler" label, latent interpolation mode or None for a pixel upscaler, PIL filter)
UPSCALERS = {
    "latent": ("Latent", "bilinear", None),
    "latent_nearest": ("Latent (nearest)", "nearest", None),
    "latent_nearest_exact": ("Latent (nearest-exact)", "nearest-exact", None),
    "latent_bicubic": ("Latent (bicubic)", "bicubic", None),
    "lanczos": ("Lanczos", None, Image.Resampling.LANCZOS),
    "nearest": ("Nearest", None, Image.Resampling.NEAREST),
}
_BY_LABEL = {label: name for name, (label, _, _) in UPSCALERS.items()}


@dataclass
class HiresFix:
    """The second pass's settings, with A1111's PNG names."""

    scale: float = 2.0          # "Hires upscale": the final size is the base size × scale (rounded down to 8 pixels)
    steps: int = 0              # "Hires steps": denoising steps of the second pass; 0 = the first pass's steps
    strength: float = 0.7       # "Denoising strength" of the second pass
    upscaler: str = "latent"    # "Hires upscaler": a key of UPSCALERS (or its A1111 label)

    def __post_init__(self):
        self.upscaler = our_name(self.upscaler, UPSCALERS, _BY_LABEL, "hires upscaler")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 1.0 <= self.scale <= 8.0:
            raise LatentDiffError(f"hires scale must be in [1, 8], got {self.scale}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise LatentDiffError(f"hires steps must be an integer ≥ 0, got {self.steps}")
        self.strength = check_strength(self.strength)

    def size(self, width: int, height: int, multiple: int = 8) -> tuple[int, int]:
        return (int(width * self.scale) // multiple * multiple, int(height * self.scale) // multiple * multiple)

    def fields(self, steps: int) -> dict:
        """A1111's infotext fields for this pass (`Hires steps` only when it differs from the first pass's, as A1111)."""
        out = {"Denoising strength": self.strength, "Hires upscale": f"{self.scale:g}"}
        if self.steps and self.steps != steps:
            out["Hires steps"] = self.steps
        out["Hires upscaler"] = UPSCALERS[self.upscaler][0]
        return out

    @classmethod
    def from_fields(cls, extra: dict) -> "HiresFix | None":
        """The settings a PNG's fields record (ours or A1111's), or None without `Hires upscale`."""
        if "Hires upscale" not in extra:
            return None
        return cls(scale=float(extra["Hires upscale"]), steps=int(extra.get("Hires steps", 0) or 0),
                   strength=float(extra.get("Denoising strength", 0.7)), upscaler=str(extra.get("Hires upscaler", "Latent")))


def second_pass_steps(steps: int, strength: float) -> int:
    """The schedule length whose strength-tail holds exactly `steps` steps (A1111 runs exactly Hires steps)."""
    total = math.ceil(steps / strength - 1e-9)
    while int(total * strength) < steps:
        total += 1
    return total


def upscale(pipe, latents: torch.Tensor, images: list[Image.Image], hires: HiresFix, size: tuple[int, int],
            generators: list[torch.Generator]) -> torch.Tensor:
    """The first pass (latents (B, C, h, w) and its 8-bit images) at the final size, as latents (B, C, H/8, W/8)."""
    w, h = size
    _, mode, resample = UPSCALERS[hires.upscaler]
    f = pipe.vae_scale_factor
    if mode is not None:
        return F.interpolate(latents.float(), size=(h // f, w // f), mode=mode).to(latents.dtype)
    big = [im.resize((w, h), resample) for im in images]
    arr = np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in big])  # (B, H, W, 3) in [-1, 1]
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2)                             # (B, 3, H, W)
    return vae_encode(pipe.vae, pixels, generators).to(pipe.device, pipe.dtype)


@torch.no_grad()
def hires_fix(pipe: PipelineBase, prompt: str | list[str], negative_prompt: str | list[str] = "", *, hires: HiresFix,
              num_inference_steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
              seed: int | None = None, height: int | None = None, width: int | None = None, num_images: int = 1,
              guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True, callback=None,
              micro_conditioning=None, refiner: PipelineBase | None = None, refiner_switch: float = 0.8,
              schedule: str = "automatic", controls: list | None = None) -> PipelineOutput:
    """Text-to-image in two passes (pipe(...) at the base size, then the upscaled redraw); PipelineOutput at the final size.

    hires: the second pass's scale, steps, strength and upscaler. Other arguments as `LatentDiffusionPipeline.__call__`
    (pipelines.text_to_image.txt2img); `width`, `height` are the first pass's size.
    """
    captured: list[torch.Tensor] = []

    def keep(step, total, latents):
        if step == total:
            captured.append(latents)
        return callback(step, total, latents) if callback is not None else None

    first = pipe(prompt, negative_prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                 sampler=sampler, seed=seed, height=height, width=width, num_images=num_images,
                 guidance_rescale=guidance_rescale, clip_skip=clip_skip, progress=progress, callback=keep,
                 micro_conditioning=micro_conditioning, refiner=refiner, refiner_switch=refiner_switch, schedule=schedule,
                 controls=controls)
    p0 = first.params[0]
    if not captured:  # the callback stopped the first pass: no second pass, as an interrupt in A1111
        return first
    size = hires.size(p0.width, p0.height, pipe.vae_scale_factor)
    steps = hires.steps or p0.steps
    seeds = [p.seed for p in first.params]
    gens = generators(seeds)
    latents = upscale(pipe, captured[0], first.images, hires, size, gens)                     # (B, C, H/8, W/8)
    req = Request([p.prompt for p in first.params], [p.negative_prompt for p in first.params], seeds, p0.sampler, p0.schedule)
    draw = Draw(req, second_pass_steps(steps, hires.strength), p0.guidance_scale, guidance_rescale, clip_skip, *size)
    draw.scheduler = pipe.scheduler_for(draw)
    draw.timesteps = strength_timesteps(draw.scheduler, draw.steps, hires.strength)
    # ControlNets steer the second pass too, their images fitted to its size (as A1111); prompt editing counts its steps
    model, on_step, _, _ = pipe.guided_model(draw, micro_conditioning, controls, edit_steps=steps)
    noise = draw_noise(generators(seeds), latents.shape).to(pipe.device, torch.float32)
    latents = draw.scheduler.add_noise(latents.float(), noise, draw.timesteps[:1].repeat(len(seeds)))  # sampler state in fp32
    latents = pipe.denoise(latents, draw.scheduler, draw.timesteps, model, gens, progress, on_step=on_step, callback=callback)
    images = pipe.to_pil(pipe.decode(latents))
    for p in first.params:
        p.extra.update(hires.fields(p0.steps))
    return PipelineOutput(images, first.params)
