"""One call's sampling request: validated settings, prompts × num_images expanded, and the PNG parameters per image."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ..errors import LatentDiffError
from .png_metadata import GenerationParams
from .samplers import check_sampler, check_schedule, schedule_options


@dataclass
class Request:
    """One call's prompts expanded to a batch: image i gets prompts[i], negatives[i] and seeds[i]."""

    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    sampler: str
    schedule: str = "automatic"


def expand_request(prompt: str | list[str], negative_prompt: str | list[str], num_images: int, seed: int | None,
                   num_inference_steps: int, sampler: str, schedule: str = "automatic") -> Request:
    """Check the sampling settings and expand prompts × num_images (seeds seed, seed+1, ... as text-to-image)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise LatentDiffError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
    if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
        raise LatentDiffError(f"steps must be a positive integer, got {num_inference_steps}")
    if num_images <= 0:
        raise LatentDiffError(f"num_images must be positive, got {num_images}")
    sampler = check_sampler(sampler)
    schedule = check_schedule(schedule)
    schedule_options(sampler, schedule)  # refuses a schedule the sampler has no option for
    seed = random.randrange(2**32) if seed is None else check_seed(seed, len(prompts) * num_images)
    prompts = [p for p in prompts for _ in range(num_images)]
    negatives = [n for n in negatives for _ in range(num_images)]
    return Request(prompts, negatives, [seed + i for i in range(len(prompts))], sampler, schedule)


def check_seed(seed, images: int = 1) -> int:
    """A seed torch's CPU generator takes for every image of the batch: 0 ≤ seed and seed + images - 1 < 2^64."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise LatentDiffError(f"seed must be an integer in [0, 2^64), got {seed}")
    if seed + images - 1 >= 2**64:
        raise LatentDiffError(f"seed {seed} + {images} images overflows 64 bits: seed + --num - 1 must stay below 2^64")
    return seed


def check_numbers(**values) -> None:
    """Every given number (None skipped) must be finite: NaN or ±inf guidance, strength or blur draw black images."""
    for name, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise LatentDiffError(f"{name} must be a finite number, got {v}")


def check_guidance(guidance_scale: float, guidance_rescale: float) -> None:
    """Finite guidance; rescale φ in [0, 1] (Lin et al. 2023 blend between rescaled and plain guidance)."""
    check_numbers(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise LatentDiffError(f"guidance rescale must be in [0, 1], got {guidance_rescale:g}")


def generation_bytes(width: int, height: int, images: int, *, unet_width: int = 0, vae_width: int = 0,
                     dtype_bytes: int = 4, vae_tile: int | None = None) -> float:
    """Rough peak bytes of drawing `images` pictures: the float image, the U-Net's top level under CFG, the VAE's top level.

    With the widths left 0 it is a lower bound (the decoded pixels alone), usable before any model is loaded.
    """
    pixels = width * height
    decoded = min(pixels, vae_tile * vae_tile) if vae_tile else pixels
    return images * (pixels * 3 * 4 * 2                          # (B, 3, H, W) float32 and its uint8 copies
                     + pixels / 64 * 2 * unet_width * dtype_bytes * 4  # (2B, C0, H/8, W/8), ~4 alive at once
                     + decoded * vae_width * 4 * 3)                  # (B, C0, H, W) float32 in the decoder, ~3 alive


def check_memory(pipe, width: int, height: int, images: int) -> None:
    """Refuse before allocating a size whose estimated peak exceeds the memory free on the pipeline's device."""
    from ..runtime import check_fits

    vae = pipe.vae
    tile = getattr(vae, "tile_sample_min_size", None) if getattr(vae, "use_tiling", False) else None
    need = generation_bytes(width, height, images, unet_width=pipe.unet.config.block_out_channels[0],
                            vae_width=vae.config.block_out_channels[0], dtype_bytes=pipe.dtype.itemsize, vae_tile=tile)
    check_fits(need, f"{width}x{height}" + (f" × {images} images" if images > 1 else ""), pipe.device)


def request_params(pipe, req: Request, steps: int, guidance_scale: float, width: int, height: int,
                   guidance_rescale: float, clip_skip: int, extra: dict) -> list[GenerationParams]:
    """GenerationParams per image of the batch, mode-specific settings in `extra` (plus A1111's `TI hashes`)."""
    from ..checkpoints.embeddings import used_in

    used = used_in(getattr(pipe, "embeddings", {}), req.prompts + req.negatives)
    if used:
        extra = {**extra, "TI hashes": ", ".join(f"{e.name}: {e.hash}" for e in used)}
    return [GenerationParams(prompt=p, negative_prompt=n, steps=steps, sampler=req.sampler, schedule=req.schedule, guidance_scale=guidance_scale,
                             seed=s, width=width, height=height, model=pipe.model_name, model_hash=pipe.model_hash,
                             guidance_rescale=guidance_rescale, clip_skip=clip_skip,
                             dtype=str(pipe.dtype).replace("torch.", ""), loras=pipe.active_loras(), extra=dict(extra))
            for p, n, s in zip(req.prompts, req.negatives, req.seeds)]
