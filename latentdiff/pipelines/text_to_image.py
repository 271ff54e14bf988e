"""Text-to-image: prompt → CLIP embeddings → seeded noise → guided denoising → VAE decode → PIL images; and SDXL's
base → refiner hand-off. `LatentDiffusionPipeline.__call__` is `txt2img` (pipelines.pipeline assembles the class)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import LatentDiffError
from ..models.prompt_schedule import prompt_schedule
from .base import PipelineBase, PipelineOutput
from .guidance import CFGDenoiser
from .sdxl import check_switch, switch_timestep


@torch.no_grad()
def txt2img(pipe: PipelineBase, prompt: str | list[str], negative_prompt: str | list[str] = "", *,
            num_inference_steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
            seed: int | None = None, height: int | None = None, width: int | None = None, num_images: int = 1,
            guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True, callback: Callable | None = None,
            micro_conditioning=None, refiner: PipelineBase | None = None, refiner_switch: float = 0.8,
            schedule: str = "automatic", controls: list | None = None) -> PipelineOutput:
    """Generate `num_images` images per prompt.

    Args:
        prompt: text (or list of texts); "" is unconditional. Prompts over 75 tokens are chunked (see README).
        negative_prompt: text(s) guidance steers away from; "" is the unconditional embedding.
        num_inference_steps: sampler steps (> 0). None: the model's default (sampling_settings).
        guidance_scale: classifier-free guidance scale; ≤ 1 turns guidance off. None: the model's default.
        sampler: a name from `latentdiff.pipelines.samplers.SAMPLERS` (e.g. "dpmpp_2m", "euler_a", "ddim").
            None: the model's default.
        seed: image i of prompt j uses seed + j·num_images + i; None picks a random seed.
        height, width: pixels, positive multiples of 8; default the model's native size.
        num_images: images per prompt.
        guidance_rescale: φ of Lin et al. 2023 (0.7 suggested for v-prediction models).
        clip_skip: use the n-th last CLIP layer (A1111's "Clip skip" n+1).
        progress: show a progress bar over the sampler steps.
        callback: `callback(step, total, latents)` after each sampler step; returning True stops sampling
            there and decodes the latents reached (the server's progress preview and interrupt).
        micro_conditioning: SDXL only: a `models.sdxl_text.MicroConditioning` or dict (original_size, crops, ...).
        refiner, refiner_switch: SDXL only: an SDXL refiner pipeline that takes over after `refiner_switch` of the
            schedule (diffusers' denoising_end / denoising_start; `refine`).
        schedule: the sigma/timestep schedule, A1111's "Schedule type": "automatic" (the sampler's own), "karras",
            "exponential", "beta", "sgm_uniform", ... (`latentdiff.pipelines.samplers.SCHEDULE_OPTIONS`).
        controls: ControlNet units (`latentdiff.pipelines.control.ControlUnit`), each with its image, weight and steps.
    Returns:
        PipelineOutput with `.images` (PIL) and `.params` (GenerationParams per image).
    """
    if refiner is not None:
        if controls:
            raise LatentDiffError("ControlNets with an SDXL refiner are not supported; draw without --refiner")
        return refine(pipe, refiner, prompt, negative_prompt, switch=refiner_switch, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, sampler=sampler, seed=seed, height=height, width=width,
                      num_images=num_images, guidance_rescale=guidance_rescale, clip_skip=clip_skip, progress=progress,
                      micro_conditioning=micro_conditioning, schedule=schedule)
    draw = pipe.request(prompt, negative_prompt, num_images=num_images, seed=seed, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, sampler=sampler, schedule=schedule, guidance_rescale=guidance_rescale,
                        clip_skip=clip_skip)
    pipe.start(draw, pipe.native_size if width is None else width, pipe.native_size if height is None else height)
    model, on_step, control_extra, control_units = pipe.guided_model(draw, micro_conditioning, controls, edit_steps=draw.steps)
    latents, gens = pipe.initial_noise(draw.req.seeds, draw.height, draw.width)
    latents = latents * draw.scheduler.init_noise_sigma
    latents = pipe.denoise(latents, draw.scheduler, draw.timesteps, model, gens, progress, on_step=on_step, callback=callback)
    return pipe.output(draw, pipe.to_pil(pipe.decode(latents)), control_extra, control_units)


@torch.no_grad()
def refine(base: PipelineBase, refiner: PipelineBase, prompt: str | list[str], negative_prompt: str | list[str] = "", *,
           switch: float = 0.8, num_inference_steps: int | None = None, guidance_scale: float | None = None,
           sampler: str | None = None, seed: int | None = None, height: int | None = None, width: int | None = None,
           num_images: int = 1, guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True,
           micro_conditioning=None, refiner_micro_conditioning=None, schedule: str = "automatic") -> PipelineOutput:
    """Base → refiner (SDXL §2.5): the base denoises the timesteps ≥ the switch cutoff, the refiner the rest from its latents.

    Same numbers as diffusers' base(denoising_end=switch, output_type="latent") then refiner(image=latents,
    denoising_start=switch) with the same generators: the refiner continues each image's generator.
    """
    switch = check_switch(switch)
    for name, p in (("base", base), ("refiner", refiner)):
        if not p.components.is_sdxl:
            raise LatentDiffError(f"the {name} model is not an SDXL model; the refiner hand-off needs SDXL base and refiner")
    if refiner.vae.config.latent_channels != base.unet.config.out_channels or refiner.unet.config.in_channels != base.unet.config.out_channels:
        raise LatentDiffError("the refiner's latents do not match the base's (an inpainting U-Net cannot refine)")
    draw = base.request(prompt, negative_prompt, num_images=num_images, seed=seed, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, sampler=sampler, schedule=schedule, guidance_rescale=guidance_rescale,
                        clip_skip=clip_skip)
    base.start(draw, width or base.native_size, height or base.native_size)
    req, steps, guided = draw.req, draw.steps, draw.guided
    if any([s[1] for s in prompt_schedule(t, steps)] != [t] for t in req.prompts + req.negatives):
        raise LatentDiffError("prompt editing [from:to:when] and alternation [a|b] do not cross the refiner hand-off yet; "
                              "draw without --refiner")

    scheduler, size = draw.scheduler, (draw.height, draw.width)
    cutoff = switch_timestep(scheduler, switch)
    base_steps = scheduler.timesteps[: int((scheduler.timesteps >= cutoff).sum())]
    context, unet = base.condition(req.prompts, req.negatives, guided, clip_skip, size, micro_conditioning)
    latents, gens = base.initial_noise(req.seeds, draw.height, draw.width)
    latents = latents * scheduler.init_noise_sigma
    latents = base.denoise(latents, scheduler, base_steps, CFGDenoiser(unet, context, draw.guidance_scale, guidance_rescale,
                                                                       scheduler=scheduler), gens, progress)

    scheduler = refiner.scheduler_for(draw)
    kept = int((scheduler.timesteps < cutoff).sum())
    if scheduler.order == 2 and kept % 2 == 0:
        kept += 1  # end after a second-order step's second half, as diffusers
    start = len(scheduler.timesteps) - kept
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    context, unet = refiner.condition(req.prompts, req.negatives, guided, clip_skip, size, refiner_micro_conditioning)
    latents = latents.to(refiner.device, refiner.dtype)
    latents = refiner.denoise(latents, scheduler, scheduler.timesteps[start:],
                              CFGDenoiser(unet, context, draw.guidance_scale, guidance_rescale, scheduler=scheduler), gens, progress)
    name = Path(refiner.model_name).stem  # A1111 writes "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8"
    extra = {"Refiner": f"{name} [{refiner.model_hash}]" if refiner.model_hash else name, "Refiner switch at": switch}
    return base.output(draw, refiner.to_pil(refiner.decode(latents)), extra, [])


def __getattr__(name: str):
    """`from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline`, the class's home before 0.2, for one release."""
    if name == "LatentDiffusionPipeline":
        from .pipeline import LatentDiffusionPipeline

        return LatentDiffusionPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
