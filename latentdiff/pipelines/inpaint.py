"""Inpainting: repaint the white part of a mask, with a 9-channel inpainting U-Net or an ordinary one.

* 9-channel U-Nets (SD1.5/SD2 inpainting; Rombach et al. 2022, https://arxiv.org/abs/2112.10752 §4.5) see
  [noisy latents, mask, masked-image latents] concatenated on the channel axis (CFGDenoiser's extra_channels).
* Ordinary 4-channel U-Nets denoise the whole latent; after every step the known region is replaced by the
  input's latents noised to the next step's level (latent blending, as RePaint/SDEdit; Lugmayr et al. 2022,
  https://arxiv.org/abs/2201.09865), which is what diffusers' StableDiffusionInpaintPipeline does too.

Draws per image generator, as diffusers: [input-image posterior sample if needed], noise, masked-image
posterior sample. With `overlay` (default) the input's pixels are pasted back outside the mask, feathered
by `mask_blur`; with overlay=False the output is diffusers' image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LatentDiffError
from .base import PipelineBase, PipelineOutput
from .image_latents import check_strength, draw_noise, vae_encode
from .images import ImageInput, InputImage, InputMask, feather, load_image, load_mask, overlay
from .request import check_numbers


def unet_mode(pipe) -> str:
    """"concat" for a 9-channel inpainting U-Net, "blend" for an ordinary one; one-line error otherwise."""
    c_in, c_lat = pipe.unet.config.in_channels, pipe.vae.config.latent_channels
    if c_in == 2 * c_lat + 1:
        return "concat"
    if c_in == c_lat:
        return "blend"
    raise LatentDiffError(f"inpainting needs a U-Net with {c_lat} (latent blending) or {2 * c_lat + 1} "
                          f"(mask + masked image) input channels; this one has {c_in}")


def check_mask_blur(blur: float, width: int, height: int) -> None:
    """A feather σ wider than the picture only costs memory (its kernel spans 6σ): refuse it."""
    if blur > max(width, height):
        raise LatentDiffError(f"--mask-blur {blur:g} px is larger than the image ({max(width, height)} px); "
                              "use a blur of a few pixels")


@torch.no_grad()
def inpaint(pipe: PipelineBase, prompt: str | list[str], image: ImageInput | InputImage, mask: ImageInput | InputMask,
            negative_prompt: str | list[str] = "", *, strength: float = 1.0, mask_threshold: float = 0.5,
            mask_blur: float = 0.0, overlay_original: bool = True, num_inference_steps: int | None = None,
            guidance_scale: float | None = None, sampler: str | None = None, seed: int | None = None, width: int | None = None,
            height: int | None = None, num_images: int = 1, guidance_rescale: float = 0.0, clip_skip: int = 0,
            progress: bool = True, callback=None, micro_conditioning=None, schedule: str = "automatic",
            controls: list | None = None) -> PipelineOutput:
    """Repaint where `mask` is white (value/255 ≥ mask_threshold), guided by `prompt`; keep the rest.

    Args:
        image: file path or PIL image; sides not multiples of 8 are resized to the nearest multiple (one warning line).
        mask: file path or PIL image of the image's size (else a one-line error); read as grayscale.
        strength: fraction of the schedule run in (0, 1]; 1 starts the masked region from pure noise.
        mask_threshold: gray/255 at or above which a pixel is repainted (default 0.5: 128 and up).
        mask_blur: σ in pixels of the Gaussian feather of the overlay's edge (0: hard edge).
        overlay_original: paste the input back outside the (feathered) mask, so unmasked pixels farther
            than 3·mask_blur from it are exactly the input's; False gives diffusers' output.
        width, height: resize image and mask to this size first (multiples of 8); default the image's size.
        Other arguments as `LatentDiffusionPipeline.__call__` (pipelines.text_to_image.txt2img).
    Returns:
        PipelineOutput; GenerationParams.extra records strength, the image and mask hashes and the mask settings.
    """
    strength = check_strength(strength)
    check_numbers(mask_blur=mask_blur, mask_threshold=mask_threshold)
    if mask_blur < 0:
        raise LatentDiffError(f"mask blur must be ≥ 0 pixels, got {mask_blur}")
    if mask_blur and not overlay_original:
        raise LatentDiffError("mask blur feathers the overlay of the original; it has no effect with the overlay off")
    draw = pipe.request(prompt, negative_prompt, num_images=num_images, seed=seed, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, sampler=sampler, schedule=schedule, guidance_rescale=guidance_rescale,
                        clip_skip=clip_skip)
    mode = unet_mode(pipe)
    init = image if isinstance(image, InputImage) else load_image(image, width, height, pipe.vae_scale_factor)
    m = mask if isinstance(mask, InputMask) else load_mask(mask, init, mask_threshold)
    w, h = init.size
    if tuple(m.tensor.shape[-2:]) != (h, w):
        raise LatentDiffError(f"mask is {m.tensor.shape[-1]}x{m.tensor.shape[-2]} but the image is {w}x{h}")
    check_mask_blur(mask_blur, w, h)
    pipe.start(draw, w, h, strength=strength)
    scheduler, timesteps = draw.scheduler, draw.timesteps
    model, _, control_extra, control_units = pipe.guided_model(draw, micro_conditioning, controls)  # no prompt editing
    gens = draw.generators()
    b, f = len(gens), pipe.vae_scale_factor
    pixels = init.tensor.expand(b, -1, -1, -1)  # (B, 3, H, W) in [-1, 1]
    shape = (b, pipe.vae.config.latent_channels, h // f, w // f)
    image_latents = None
    if mode == "blend" or strength < 1.0:
        image_latents = vae_encode(pipe.vae, pixels, gens).to(pipe.device, torch.float32)  # (B, C, h, w), fp32 like the sampler
    noise = draw_noise(gens, shape).to(pipe.device, torch.float32)
    if strength < 1.0:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(b))
    else:
        latents = noise * scheduler.init_noise_sigma
    # diffusers' nearest-neighbour downsampling of the binary mask: each latent cell takes its top-left pixel.
    latent_mask = F.interpolate(m.tensor, size=shape[2:]).to(pipe.device, pipe.dtype).expand(b, -1, -1, -1)  # (B, 1, h, w)

    masked_pixels = pixels * (m.tensor < 0.5)  # the region to repaint set to 0 (mid gray)
    if mode == "concat":
        masked_latents = vae_encode(pipe.vae, masked_pixels, gens).to(pipe.device, pipe.dtype)  # (B, C, h, w)
        cond = torch.cat([latent_mask, masked_latents], dim=1)  # (B, 1 + C, h, w)
        model.extra_channels = cond  # the 9-channel U-Net's mask and masked image, beside the latents
        on_step = None
    else:
        for g in gens:  # diffusers encodes the masked image here too (unused for 4 channels): make the same draw
            torch.randn(shape[1:], generator=g)

        def on_step(i: int, t, x: torch.Tensor) -> torch.Tensor:
            """Put back the known region, noised to the level of the next step (clean after the last)."""
            known = image_latents
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(image_latents, noise, timesteps[i + 1 : i + 2])
            return (1 - latent_mask) * known + latent_mask * x

    latents = pipe.denoise(latents, scheduler, timesteps, model, gens, progress, on_step=on_step, callback=callback)
    images = pipe.to_pil(pipe.decode(latents))
    if overlay_original:
        alpha = feather(m.tensor, mask_blur)
        images = [overlay(im, init.pil, alpha) for im in images]

    extra = {"Denoising strength": strength, "Init image hash": init.sha, "Mask hash": m.sha,
             "Mask threshold": m.threshold, "Mask blur": mask_blur, "Overlay original": overlay_original,
             "Inpainting": "9-channel U-Net" if mode == "concat" else "latent blending", **control_extra}
    return pipe.output(draw, images, extra, control_units)
