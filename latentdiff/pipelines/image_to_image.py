"""Image-to-image (SDEdit, Meng et al. 2021, https://arxiv.org/abs/2108.01073): encode, noise to `strength`, denoise.

Matches diffusers' StableDiffusionImg2ImgPipeline draw for draw: each image's CPU generator first samples
the VAE's latent distribution (`retrieve_latents(..., sample_mode="sample")`), then draws the noise.
"""

from __future__ import annotations


import torch

from ..errors import LatentDiffError
from .control import controlled_unet, with_controls
from .guidance import CFGDenoiser
from .images import ImageInput, InputImage, load_image
from .request import Request, check_guidance, check_memory, expand_request, request_params  # noqa: F401  (inpaint imports them)
from .samplers import make_scheduler


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


def check_plain_unet(pipe) -> None:
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise LatentDiffError(f"this U-Net takes {pipe.unet.config.in_channels} input channels (an inpainting model); "
                              "use inpaint, or a model with as many as the VAE's latent channels")


@torch.no_grad()
def img2img(pipe, prompt: str | list[str], image: ImageInput | InputImage, negative_prompt: str | list[str] = "", *,
            strength: float = 0.75, num_inference_steps: int | None = None, guidance_scale: float | None = None, sampler: str | None = None,
            seed: int | None = None, width: int | None = None, height: int | None = None, num_images: int = 1,
            guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True, callback=None,
            micro_conditioning=None, schedule: str = "automatic",
            controls: list | None = None):
    """Redraw `image` under `prompt`; `strength` in (0, 1] says how much of the schedule runs (diffusers' semantics).

    Args:
        pipe: a LatentDiffusionPipeline.
        image: a file path or PIL image; sides not multiples of 8 are resized to the nearest multiple (one warning line).
        strength: int(steps · strength) denoising steps run, from the matching noise level.
        width, height: resize the input to this size first (multiples of 8); default its own size.
        Other arguments as LatentDiffusionPipeline.__call__.
    Returns:
        PipelineOutput; each GenerationParams.extra records the denoising strength and the input's sha256[:10].
    """
    from .text_to_image import PipelineOutput, check_size

    strength = check_strength(strength)
    num_inference_steps, guidance_scale, sampler = pipe.sampling_settings(num_inference_steps, guidance_scale, sampler)
    req = expand_request(prompt, negative_prompt, num_images, seed, num_inference_steps, sampler, schedule)
    check_plain_unet(pipe)
    init = image if isinstance(image, InputImage) else load_image(image, width, height, pipe.vae_scale_factor)
    w, h = init.size
    check_size(w, h, pipe.vae_scale_factor)
    check_guidance(guidance_scale, guidance_rescale)
    check_memory(pipe, w, h, len(req.prompts))
    scheduler = make_scheduler(req.sampler, pipe.components.scheduler_config, req.schedule)
    scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    timesteps = strength_timesteps(scheduler, num_inference_steps, strength)

    from .prompt_editing import step_contexts, switcher  # [from:to:when], [a|b] over the steps that run

    guided = guidance_scale > 1.0
    context, unet = pipe.condition(req.prompts, req.negatives, guided, clip_skip, (h, w), micro_conditioning)
    contexts = step_contexts(pipe, req.prompts, req.negatives, guided, clip_skip, max(1, len(timesteps) // scheduler.order),
                             first=context)
    unet, control_extra, control_units = controlled_unet(pipe, controls, w, h, len(timesteps), guided, unet)
    model = CFGDenoiser(unet, contexts[0], guidance_scale, guidance_rescale, scheduler=scheduler)
    gens = [torch.Generator("cpu").manual_seed(s) for s in req.seeds]
    batch = init.tensor.expand(len(gens), -1, -1, -1)  # (B, 3, H, W)
    init_latents = vae_encode(pipe.vae, batch, gens).to(pipe.device, torch.float32)  # first draw of each generator
    noise = draw_noise(gens, init_latents.shape).to(pipe.device, torch.float32)   # second draw
    latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(len(gens)))
    latents = pipe.denoise(latents, scheduler, timesteps, model, gens, progress,
                           on_step=switcher(model, contexts, len(timesteps)), callback=callback)
    images = pipe.to_pil(pipe.decode(latents))

    params = request_params(pipe, req, num_inference_steps, guidance_scale, w, h, guidance_rescale, clip_skip,
                            {"Denoising strength": strength, "Init image hash": init.sha, **control_extra})
    return PipelineOutput(images, with_controls(params, control_units))
