"""One call's sampling request: validated settings, prompts × num_images expanded, and the PNG parameters per image."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import LatentDiffError
from .params import GenerationParams
from .samplers import check_sampler


@dataclass
class Request:
    """One call's prompts expanded to a batch: image i gets prompts[i], negatives[i] and seeds[i]."""

    prompts: list[str]
    negatives: list[str]
    seeds: list[int]
    sampler: str


def expand_request(prompt: str | list[str], negative_prompt: str | list[str], num_images: int, seed: int | None,
                   num_inference_steps: int, sampler: str) -> Request:
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
    seed = random.randrange(2**32) if seed is None else int(seed)
    prompts = [p for p in prompts for _ in range(num_images)]
    negatives = [n for n in negatives for _ in range(num_images)]
    return Request(prompts, negatives, [seed + i for i in range(len(prompts))], sampler)


def request_params(pipe, req: Request, steps: int, guidance_scale: float, width: int, height: int,
                   guidance_rescale: float, clip_skip: int, extra: dict) -> list[GenerationParams]:
    """GenerationParams per image of the batch, mode-specific settings in `extra`."""
    return [GenerationParams(prompt=p, negative_prompt=n, steps=steps, sampler=req.sampler, guidance_scale=guidance_scale,
                             seed=s, width=width, height=height, model=pipe.model_name, model_hash=pipe.model_hash,
                             guidance_rescale=guidance_rescale, clip_skip=clip_skip,
                             dtype=str(pipe.dtype).replace("torch.", ""), loras=pipe.active_loras(), extra=dict(extra))
            for p, n, s in zip(req.prompts, req.negatives, req.seeds)]
