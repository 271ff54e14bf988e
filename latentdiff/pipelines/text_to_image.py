"""Text-to-image: prompt → CLIP embeddings → seeded noise → guided denoising → VAE decode → PIL images."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints import Components, file_hash, load_components, save_diffusers_folder, save_single_file
from ..errors import LatentDiffError
from ..models.attention import set_attention_backend
from ..models.text import encode_prompts
from ..runtime import parse_device, parse_dtype
from .control import controlled_unet, with_controls
from .guidance import CFGDenoiser
from .params import GenerationParams
from .request import check_guidance, check_memory, check_numbers, expand_request, request_params
from .samplers import make_scheduler


@dataclass
class PipelineOutput:
    """What a pipeline call returns: PIL images and, for each, the parameters that reproduce it."""

    images: list[Image.Image]
    params: list[GenerationParams] = field(default_factory=list)


def check_size(width: int, height: int, multiple: int = 8) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            raise LatentDiffError(f"{name} must be a positive multiple of {multiple}, got {v}")


class LatentDiffusionPipeline:
    """Stable-Diffusion-style text-to-image with our U-Net and diffusers/transformers VAE, CLIP and schedulers."""

    def __init__(self, components: Components, *, device=None, dtype=None, attention: str = "sdpa", model_name: str = "",
                 fast: bool | None = None, compile: bool = False):
        self.components = components
        self.model_name = model_name or components.source
        self._model_hash: str | None = None
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        set_attention_backend(self.unet, attention)
        self.attention = attention
        self.to(self.device, self.dtype)
        # fast=None: the levers benchmarks proved for this device and dtype; True: those plus VAE tiling; False: none
        self.fast_levers: list[str] = []  # what fast/compile turned on (latentdiff.fast; benchmarks/BENCHMARKS.md)
        if fast is not False or compile:
            from ..fast import apply_fast

            self.fast_levers = apply_fast(self, fast=fast, compile=compile)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device=None, dtype=None, attention: str = "sdpa",
                        allow_pickle: bool = False, prediction_type: str | None = None, fast: bool | None = None,
                        compile: bool = False, vae: str | os.PathLike | None = None) -> "LatentDiffusionPipeline":
        """Load a diffusers folder or a single `.safetensors` (or, with allow_pickle, `.ckpt`) file from a local path.

        vae: a separate VAE (diffusers vae folder or .safetensors in diffusers or LDM names) replacing the model's.
        """
        components = load_components(path, allow_pickle=allow_pickle, prediction_type=prediction_type)
        if vae is not None:
            from ..checkpoints.vae_file import load_vae

            components.vae = load_vae(vae, components.vae)
            components.extra["vae"] = str(vae)
        return cls(components, device=device, dtype=dtype, attention=attention, model_name=str(path), fast=fast, compile=compile)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a diffusers folder (loadable by diffusers' StableDiffusionPipeline too)."""
        return save_diffusers_folder(self.components, path)

    def save_single_file(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write one A1111/CompVis-layout `.safetensors` checkpoint."""
        return save_single_file(self.components, path, dtype)

    def to(self, device=None, dtype=None) -> "LatentDiffusionPipeline":
        self.device = parse_device(device) if device is not None else self.device
        self.dtype = parse_dtype(dtype, self.device) if dtype is not None else self.dtype
        self.unet.to(self.device, self.dtype)
        for encoder in (self.text_encoder, self.components.text_encoder_2):  # the SDXL refiner has only the second
            if encoder is not None:
                encoder.to(self.device, self.dtype)
        # SD's VAE overflows in fp16 (diffusers flags it `force_upcast`): decode it in fp32 then.
        upcast = self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", True)
        self.vae.to(self.device, torch.float32 if upcast else self.dtype)
        return self

    unet = property(lambda self: self.components.unet)
    vae = property(lambda self: self.components.vae)
    text_encoder = property(lambda self: self.components.text_encoder)
    tokenizer = property(lambda self: self.components.tokenizer)

    # -- LoRA adapters (latentdiff.lora.manager does the work) --------------------------------------------------------
    @property
    def loras(self):
        """The LoraManager holding this pipeline's adapters (created on first use)."""
        if getattr(self, "_loras", None) is None:
            from ..lora.manager import LoraManager

            self._loras = LoraManager(self.unet, self.text_encoder, self.components.text_encoder_2)
        return self._loras

    def load_lora(self, path: str | os.PathLike, *, name: str | None = None, weight: float = 1.0) -> str:
        """Attach a LoRA file (peft/diffusers or kohya/A1111 format) as a named adapter; returns its name."""
        check_numbers(**{"LoRA weight": weight})
        return self.loras.load(path, name=name, weight=weight)

    def set_loras(self, weights: dict[str, float]) -> None:
        """Run exactly these adapters with these weights ({name: weight}); the others stay loaded, switched off."""
        check_numbers(**{f"LoRA weight of {name}": w for name, w in weights.items()})
        self.loras.set_weights(weights)

    def disable_loras(self) -> None:
        """Draw with the base model alone (call set_loras to switch adapters back on)."""
        self.loras.set_enabled(False)

    def fuse_loras(self) -> None:
        """Fold the active adapters into the weights (faster steps); unfuse_loras restores the base bit for bit."""
        self.loras.fuse()

    def unfuse_loras(self) -> None:
        self.loras.unfuse()

    def active_loras(self) -> list[list]:
        """[[path or name, weight], ...] of the adapters now changing the output (for GenerationParams.loras)."""
        if getattr(self, "_loras", None) is None:
            return []
        return [[a.path or a.name, a.weight] for a in self._loras.active]

    # -- textual-inversion embeddings (latentdiff.checkpoints.embeddings reads the files) ---------------------------
    @property
    def embeddings(self) -> dict:
        """{prompt name: Embedding} this pipeline knows; a prompt uses one by writing its name."""
        if getattr(self, "_embeddings", None) is None:
            self._embeddings = {}
        return self._embeddings

    def load_embeddings(self, path: str | os.PathLike, *, allow_pickle: bool = False) -> list[str]:
        """Add an embedding file, or every one in a folder (A1111's embeddings folder); returns the names added."""
        from ..checkpoints.embeddings import read_embedding, read_embeddings

        found = read_embeddings(path, allow_pickle=allow_pickle) if Path(path).is_dir() else \
            {(e := read_embedding(path, allow_pickle=allow_pickle)).name: e}
        self.embeddings.update(found)
        return list(found)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            self._model_hash = file_hash(self.components.source) if Path(self.components.source).exists() else ""  # file or folder
        return self._model_hash

    # -- the stages, in data-flow order ---------------------------------------------------------------------------
    def condition(self, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int = 0,
                  size: tuple[int, int] | None = None, micro_conditioning=None) -> tuple[torch.Tensor, Callable]:
        """(context, model to guide): text embeddings and the U-Net; for SDXL the U-Net has its added conditioning
        (pooled text, micro-conditioning at `size` = (height, width)) bound (pipelines.sdxl)."""
        if self.components.is_sdxl:
            from .sdxl import condition

            native = self.unet.config.sample_size * self.vae_scale_factor
            return condition(self, prompts, negatives, guided, clip_skip, size or (native, native), micro_conditioning)
        return self.encode_text(prompts, negatives, guided, clip_skip), self.unet

    def encode_text(self, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int = 0) -> torch.Tensor:
        """[uncond; cond] embeddings (2B, T, D) when guided, else cond only (B, T, D)."""
        layers = self.text_encoder.config.num_hidden_layers
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0:
            raise LatentDiffError(f"--clip-skip must be ≥ 0, got {clip_skip}")
        if clip_skip >= layers:
            raise LatentDiffError(f"--clip-skip {clip_skip} is beyond the text encoder's {layers} layers (use 0 to {layers - 1})")
        texts = negatives + prompts if guided else prompts
        from ..checkpoints.embeddings import vectors_for

        vectors = vectors_for(self.embeddings, self.text_encoder.config.hidden_size)
        return encode_prompts(self.tokenizer, self.text_encoder, texts, clip_skip=clip_skip, embeddings=vectors).to(self.dtype)

    def initial_noise(self, seeds: list[int], height: int, width: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Gaussian latents (B, C, h, w) in fp32, one CPU generator per image seeded with its seed (as diffusers with a list)."""
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        c = self.unet.config.out_channels
        shape = (1, c, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])  # (B, C, h, w)
        return noise.to(self.device), gens  # fp32: the sampler's state stays fp32 (denoise)

    def denoise(self, latents: torch.Tensor, scheduler, timesteps: torch.Tensor, model: Callable, generators: list,
                progress: bool = True, on_step: Callable | None = None, callback: Callable | None = None) -> torch.Tensor:
        """Run the sampler: at each t, predict with `model` and let the diffusers scheduler step.

        `callback(step, total, latents)` runs after each step (step counts from 1); returning True stops early.
        The sampler works in fp32 for every model dtype: latents stay fp32 between steps and the scheduler steps on an
        fp32 prediction (so ancestral noise is drawn in fp32); only the model runs in `self.dtype`.
        """
        extra = {}
        step_params = inspect.signature(scheduler.step).parameters
        if "eta" in step_params:
            extra["eta"] = 0.0
        if "generator" in step_params:
            extra["generator"] = generators
        latents = latents.float()  # (B, C, h, w) fp32 sampler state
        for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
            x_in = scheduler.scale_model_input(latents, t)
            pred = model(x_in.to(self.dtype), t).float()
            latents = scheduler.step(pred, t, latents, return_dict=False, **extra)[0]
            if on_step is not None:
                latents = on_step(i, t, latents)
            if callback is not None and callback(i + 1, len(timesteps), latents):
                break
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1], (B, 3, H, W) float32."""
        cfg = self.vae.config
        latents = latents.to(self.vae.dtype) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            latents = latents + cfg.shift_factor
        images = self.vae.decode(latents).sample  # (B, 3, H, W) in about [-1, 1]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        arr = images.cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]

    # -- the call ------------------------------------------------------------------------------------------------
    def sampling_settings(self, num_inference_steps: int | None, guidance_scale: float | None,
                          sampler: str | None) -> tuple[int, float, str]:
        """Fill what the caller left None: the model's generation_config.json, else SAMPLING_DEFAULTS (25, 7.5, dpmpp_2m)."""
        from ..defaults import SAMPLING_DEFAULTS

        d = {**SAMPLING_DEFAULTS, **self.components.generation}
        return (d["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
                d["guidance_scale"] if guidance_scale is None else guidance_scale, d["sampler"] if sampler is None else sampler)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] = "", *, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None, seed: int | None = None, height: int | None = None,
                 width: int | None = None, num_images: int = 1, guidance_rescale: float = 0.0, clip_skip: int = 0,
                 progress: bool = True, callback: Callable | None = None,
                 micro_conditioning=None, refiner: "LatentDiffusionPipeline | None" = None, refiner_switch: float = 0.8,
                 schedule: str = "automatic", controls: list | None = None,
                 ) -> PipelineOutput:
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
            schedule: the sigma/timestep schedule, A1111's "Schedule type": "automatic" (the sampler's own), "karras",
                "exponential", "beta", "sgm_uniform", ... (`latentdiff.pipelines.samplers.SCHEDULE_OPTIONS`).
            callback: `callback(step, total, latents)` after each sampler step; returning True stops sampling
                there and decodes the latents reached (the server's progress preview and interrupt).
            micro_conditioning: SDXL only: a `models.sdxl_text.MicroConditioning` or dict (original_size, crops, ...).
            refiner, refiner_switch: SDXL only: an SDXL refiner pipeline that takes over after `refiner_switch` of the
                schedule (diffusers' denoising_end / denoising_start; pipelines.sdxl.refine).
            controls: ControlNet units (`latentdiff.pipelines.control.ControlUnit`), each with its image, weight and steps.
        Returns:
            PipelineOutput with `.images` (PIL) and `.params` (GenerationParams per image).
        """
        num_inference_steps, guidance_scale, sampler = self.sampling_settings(num_inference_steps, guidance_scale, sampler)
        if refiner is not None:
            from .sdxl import refine

            if controls:
                raise LatentDiffError("ControlNets with an SDXL refiner are not supported; draw without --refiner")
            return refine(self, refiner, prompt, negative_prompt, switch=refiner_switch, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, sampler=sampler, seed=seed, height=height, width=width,
                          num_images=num_images, guidance_rescale=guidance_rescale, clip_skip=clip_skip, progress=progress,
                          micro_conditioning=micro_conditioning, schedule=schedule)
        native = self.unet.config.sample_size * self.vae_scale_factor
        height = native if height is None else height
        width = native if width is None else width
        check_size(width, height, self.vae_scale_factor)
        check_guidance(guidance_scale, guidance_rescale)
        req = expand_request(prompt, negative_prompt, num_images, seed, num_inference_steps, sampler, schedule)
        prompts, negatives, seeds, sampler = req.prompts, req.negatives, req.seeds, req.sampler
        check_memory(self, width, height, len(req.prompts))
        scheduler = make_scheduler(sampler, self.components.scheduler_config, req.schedule)
        scheduler.set_timesteps(num_inference_steps, device=self.device)

        from .prompt_editing import step_contexts, switcher  # [from:to:when], [a|b]: conditioning by step

        guided = guidance_scale > 1.0
        context, unet = self.condition(prompts, negatives, guided, clip_skip, (height, width), micro_conditioning)
        contexts = step_contexts(self, prompts, negatives, guided, clip_skip, num_inference_steps, first=context)
        unet, control_extra, control_units = controlled_unet(self, controls, width, height, len(scheduler.timesteps),
                                                             guided, unet)
        model = CFGDenoiser(unet, contexts[0], guidance_scale, guidance_rescale, scheduler=scheduler)
        latents, gens = self.initial_noise(seeds, height, width)
        latents = latents * scheduler.init_noise_sigma
        latents = self.denoise(latents, scheduler, scheduler.timesteps, model, gens, progress,
                               on_step=switcher(model, contexts, len(scheduler.timesteps)), callback=callback)
        images = self.to_pil(self.decode(latents))
        params = request_params(self, req, num_inference_steps, guidance_scale, width, height, guidance_rescale, clip_skip, control_extra)
        return PipelineOutput(images, with_controls(params, control_units))

    def img2img(self, prompt: str | list[str], image, negative_prompt: str | list[str] = "", **kwargs) -> PipelineOutput:
        """Redraw an image (path or PIL) under a prompt, to `strength` in (0, 1]; see pipelines.image_to_image.img2img."""
        from .image_to_image import img2img

        return img2img(self, prompt, image, negative_prompt, **kwargs)

    def inpaint(self, prompt: str | list[str], image, mask, negative_prompt: str | list[str] = "", **kwargs) -> PipelineOutput:
        """Repaint the white part of `mask` (9-channel U-Net or latent blending); see pipelines.inpaint.inpaint."""
        from .inpaint import inpaint

        return inpaint(self, prompt, image, mask, negative_prompt, **kwargs)
