"""Image-to-image (SDEdit, Meng et al. 2021, https://arxiv.org/abs/2108.01073): encode, noise to `strength`, denoise.

Matches diffusers' StableDiffusionImg2ImgPipeline draw for draw: each image's CPU generator first samples
the VAE's latent distribution (`retrieve_latents(..., sample_mode="sample")`), then draws the noise.
"""

from __future__ import annotations

import torch

from ..errors import LatentDiffError
from .base import PipelineBase, PipelineOutput
from .image_latents import check_strength, draw_noise, vae_encode
from .images import ImageInput, InputImage, load_image


def check_plain_unet(pipe) -> None:
    """Refuse an inpainting U-Net (more input channels than the VAE has latent channels): img2img feeds it latents alone."""
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise LatentDiffError(f"this U-Net takes {pipe.unet.config.in_channels} input channels (an inpainting model); "
                              "use inpaint, or a model with as many as the VAE's latent channels")


@torch.no_grad()
def img2img(pipe: PipelineBase, prompt: str | list[str], image: ImageInput | InputImage, negative_prompt: str | list[str] = "", *,
            strength: float = 0.75, num_inference_steps: int | None = None, guidance_scale: float | None = None,
            sampler: str | None = None, seed: int | None = None, width: int | None = None, height: int | None = None,
            num_images: int = 1, guidance_rescale: float = 0.0, clip_skip: int = 0, progress: bool = True, callback=None,
            micro_conditioning=None, schedule: str = "automatic", controls: list | None = None) -> PipelineOutput:
    """Redraw `image` under `prompt`; `strength` in (0, 1] says how much of the schedule runs (diffusers' semantics).

    Args:
        image: a file path or PIL image; sides not multiples of 8 are resized to the nearest multiple (one warning line).
        strength: int(steps · strength) denoising steps run, from the matching noise level.
        width, height: resize the input to this size first (multiples of 8); default its own size.
        Other arguments as `LatentDiffusionPipeline.__call__` (pipelines.text_to_image.txt2img).
    Returns:
        PipelineOutput; each GenerationParams.extra records the denoising strength and the input's sha256[:10].
    """
    strength = check_strength(strength)
    draw = pipe.request(prompt, negative_prompt, num_images=num_images, seed=seed, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, sampler=sampler, schedule=schedule, guidance_rescale=guidance_rescale,
                        clip_skip=clip_skip)
    check_plain_unet(pipe)
    init = image if isinstance(image, InputImage) else load_image(image, width, height, pipe.vae_scale_factor)
    pipe.start(draw, *init.size, strength=strength)
    scheduler, timesteps = draw.scheduler, draw.timesteps
    model, on_step, control_extra, control_units = pipe.guided_model(  # prompt editing counts the steps that run
        draw, micro_conditioning, controls, edit_steps=max(1, len(timesteps) // scheduler.order))
    gens = draw.generators()
    batch = init.tensor.expand(len(gens), -1, -1, -1)  # (B, 3, H, W)
    init_latents = vae_encode(pipe.vae, batch, gens).to(pipe.device, torch.float32)  # first draw of each generator
    noise = draw_noise(gens, init_latents.shape).to(pipe.device, torch.float32)   # second draw
    latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(len(gens)))
    latents = pipe.denoise(latents, scheduler, timesteps, model, gens, progress, on_step=on_step, callback=callback)
    extra = {"Denoising strength": strength, "Init image hash": init.sha, **control_extra}
    return pipe.output(draw, pipe.to_pil(pipe.decode(latents)), extra, control_units)
