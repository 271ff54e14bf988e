"""SDXL through the ordinary pipeline: its conditioning as a U-Net wrapper, and the base → refiner hand-off.

`condition` returns what `LatentDiffusionPipeline.condition` returns for SD1/SD2, (context, model), with the model
being the U-Net with SDXL's added conditioning (pooled text, micro-conditioning numbers) bound, so the samplers,
guidance and img2img/inpaint code are the same for every family.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LatentDiffError
from ..models.sdxl_text import MicroConditioning, encode_sdxl


class AddedCondUNet:
    """The U-Net called as unet(x, t, context, **kw), with SDXL's added_cond_kwargs for the [uncond; cond] batch bound."""

    def __init__(self, unet, text_embeds: torch.Tensor, time_ids: torch.Tensor):
        self.unet, self.text_embeds, self.time_ids = unet, text_embeds, time_ids  # (n, P), (n, k)

    config = property(lambda self: self.unet.config)
    dtype = property(lambda self: self.unet.dtype)
    device = property(lambda self: self.unet.device)

    def __call__(self, x: torch.Tensor, t, context: torch.Tensor, **kwargs) -> torch.Tensor:
        added = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return self.unet(x, t, context, added_cond_kwargs=added, **kwargs)


def encoders(pipe) -> tuple[list, list]:
    """(tokenizers, text encoders) in SDXL order: CLIP ViT-L then bigG for the base, bigG alone for the refiner."""
    c = pipe.components
    pairs = [(c.tokenizer, c.text_encoder), (c.tokenizer_2, c.text_encoder_2)]
    pairs = [(t, e) for t, e in pairs if e is not None]
    return [t for t, _ in pairs], [e for _, e in pairs]


@torch.no_grad()
def encode_texts(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([uncond; cond] or cond context (n, T, D), pooled text (n, P)) under A1111's prompt syntax and the pipe's
    textual-inversion embeddings (an SDXL pair's clip_l half for CLIP ViT-L, clip_g for bigG).

    An empty negative prompt gives all-zero negative embeddings when the model says force_zeros_for_empty_prompt
    (SDXL base; diffusers does this for negative_prompt=None).
    """
    from ..checkpoints.embeddings import vectors_for

    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
        raise LatentDiffError(f"--clip-skip must be an integer ≥ 0, got {clip_skip}")
    tokenizers, encs = encoders(pipe)
    keys = ["clip_l", "clip_g"][-len(encs):]  # the refiner's one encoder is bigG
    vectors = [vectors_for(getattr(pipe, "embeddings", {}), e.config.hidden_size, k) for e, k in zip(encs, keys)]
    texts = negatives + prompts if guided else prompts
    context, pooled = encode_sdxl(tokenizers, encs, texts, clip_skip=clip_skip, embeddings=vectors)  # (n, T, D), (n, P)
    if guided and pipe.components.extra.get("force_zeros_for_empty_prompt", True):
        empty = torch.tensor([n == "" for n in negatives] + [False] * len(prompts), device=context.device)
        context = context.masked_fill(empty[:, None, None], 0.0)
        pooled = pooled.masked_fill(empty[:, None], 0.0)
    return context.to(pipe.dtype), pooled.to(pipe.dtype)


@torch.no_grad()
def condition(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int, size: tuple[int, int],
              micro: MicroConditioning | dict | None = None) -> tuple[torch.Tensor, AddedCondUNet]:
    """([uncond; cond] context (2B, T, D) or cond (B, T, D), the U-Net with pooled text and time ids bound)."""
    height, width = size
    opts = pipe.components.extra
    micro = MicroConditioning.of(micro)
    context, pooled = encode_texts(pipe, prompts, negatives, guided, clip_skip)  # (n, T, D), (n, P)
    b = len(prompts)
    neg_ids, pos_ids = micro.time_ids(height, width, opts.get("requires_aesthetics_score", False))
    cfg = pipe.unet.config
    want = cfg.projection_class_embeddings_input_dim
    if cfg.addition_time_embed_dim * len(pos_ids) + pooled.shape[-1] != want:
        raise LatentDiffError(f"the U-Net's added embedding takes {want} numbers, but {len(pos_ids)} micro-conditioning numbers "
                              f"and a {pooled.shape[-1]}-d pooled text give {cfg.addition_time_embed_dim * len(pos_ids) + pooled.shape[-1]} "
                              "(requires_aesthetics_score in model_index.json decides 5 or 6 numbers)")
    rows = ([neg_ids] * b if guided else []) + [pos_ids] * b
    time_ids = torch.tensor(rows, dtype=pipe.dtype, device=pipe.device)  # (n, 5 or 6)
    return context, AddedCondUNet(pipe.unet, pooled, time_ids)


def switch_timestep(scheduler, fraction: float) -> int:
    """diffusers' denoising_end/denoising_start cutoff: the base runs timesteps ≥ this, the refiner those below it."""
    n = scheduler.config.num_train_timesteps
    return int(round(n - fraction * n))


def check_switch(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise LatentDiffError(f"--refiner-switch must be in (0, 1), got {fraction}")
    return float(fraction)


@torch.no_grad()
def refine(base, refiner, prompt, negative_prompt="", *, switch: float = 0.8, num_inference_steps: int, guidance_scale: float,
           sampler: str, seed: int | None = None, height: int | None = None, width: int | None = None, num_images: int = 1,
           guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True, micro_conditioning=None,
           refiner_micro_conditioning=None, schedule: str = "automatic"):
    """Base → refiner (SDXL §2.5): the base denoises the timesteps ≥ the switch cutoff, the refiner the rest from its latents.

    Same numbers as diffusers' base(denoising_end=switch, output_type="latent") then refiner(image=latents,
    denoising_start=switch) with the same generators: the refiner continues each image's generator.
    """
    from .guidance import CFGDenoiser
    from .request import check_guidance, check_memory, expand_request, request_params
    from .samplers import make_scheduler
    from .text_to_image import PipelineOutput, check_size

    switch = check_switch(switch)
    for name, p in (("base", base), ("refiner", refiner)):
        if not p.components.is_sdxl:
            raise LatentDiffError(f"the {name} model is not an SDXL model; the refiner hand-off needs SDXL base and refiner")
    if refiner.vae.config.latent_channels != base.unet.config.out_channels or refiner.unet.config.in_channels != base.unet.config.out_channels:
        raise LatentDiffError("the refiner's latents do not match the base's (an inpainting U-Net cannot refine)")
    native = base.unet.config.sample_size * base.vae_scale_factor
    height, width = height or native, width or native
    check_size(width, height, base.vae_scale_factor)
    check_guidance(guidance_scale, guidance_rescale)
    req = expand_request(prompt, negative_prompt, num_images, seed, num_inference_steps, sampler, schedule)
    check_memory(base, width, height, len(req.prompts))
    from ..models.prompt_schedule import prompt_schedule

    if any([s[1] for s in prompt_schedule(t, num_inference_steps)] != [t] for t in req.prompts + req.negatives):
        raise LatentDiffError("prompt editing [from:to:when] and alternation [a|b] do not cross the refiner hand-off yet; "
                              "draw without --refiner")
    guided = guidance_scale > 1.0

    scheduler = make_scheduler(req.sampler, base.components.scheduler_config, req.schedule)
    scheduler.set_timesteps(num_inference_steps, device=base.device)
    cutoff = switch_timestep(scheduler, switch)
    base_steps = scheduler.timesteps[: int((scheduler.timesteps >= cutoff).sum())]
    context, unet = base.condition(req.prompts, req.negatives, guided, clip_skip, (height, width), micro_conditioning)
    latents, gens = base.initial_noise(req.seeds, height, width)
    latents = latents * scheduler.init_noise_sigma
    latents = base.denoise(latents, scheduler, base_steps, CFGDenoiser(unet, context, guidance_scale, guidance_rescale, scheduler=scheduler),
                           gens, progress)

    scheduler = make_scheduler(req.sampler, refiner.components.scheduler_config, req.schedule)
    scheduler.set_timesteps(num_inference_steps, device=refiner.device)
    kept = int((scheduler.timesteps < cutoff).sum())
    if scheduler.order == 2 and kept % 2 == 0:
        kept += 1  # end after a second-order step's second half, as diffusers
    start = len(scheduler.timesteps) - kept
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    context, unet = refiner.condition(req.prompts, req.negatives, guided, clip_skip, (height, width), refiner_micro_conditioning)
    latents = latents.to(refiner.device, refiner.dtype)
    latents = refiner.denoise(latents, scheduler, scheduler.timesteps[start:],
                              CFGDenoiser(unet, context, guidance_scale, guidance_rescale, scheduler=scheduler), gens, progress)
    images = refiner.to_pil(refiner.decode(latents))
    name = Path(refiner.model_name).stem  # A1111 writes "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8"
    extra = {"Refiner": f"{name} [{refiner.model_hash}]" if refiner.model_hash else name, "Refiner switch at": switch}
    return PipelineOutput(images, request_params(base, req, num_inference_steps, guidance_scale, width, height, guidance_rescale, clip_skip,
                                                   extra))
