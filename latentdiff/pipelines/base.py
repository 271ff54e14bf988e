"""The pipeline's shared part: components, device, LoRA and embeddings, the stages (text, noise, denoise, decode) and
the preamble every mode runs (settings → request → scheduler → text → generators). Modes import this, never each other."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoints import Components, file_hash, load_components, save_diffusers_folder, save_single_file
from ..defaults import SAMPLING_DEFAULTS
from ..errors import LatentDiffError
from ..models.attention import set_attention_backend
from ..models.text import encode_prompts
from ..runtime import parse_device, parse_dtype
from .control import controlled_unet, with_controls
from .guidance import CFGDenoiser
from .image_latents import draw_noise, strength_timesteps
from .png_metadata import GenerationParams
from .prompt_editing import step_contexts, switcher
from .request import Request, check_guidance, check_memory, check_numbers, expand_request, request_params
from .samplers import make_scheduler
from .sdxl import condition as sdxl_condition


@dataclass
class PipelineOutput:
    """What a pipeline call returns: PIL images and, for each, the parameters that reproduce it."""

    images: list[Image.Image]
    params: list[GenerationParams] = field(default_factory=list)


def check_size(width: int, height: int, multiple: int = 8) -> None:
    """Width and height must be positive multiples of the VAE's downsampling factor."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            raise LatentDiffError(f"{name} must be a positive multiple of {multiple}, got {v}")


P = TypeVar("P", bound="PipelineBase")  # from_pretrained and to() return the caller's class (LatentDiffusionPipeline)


@dataclass
class Draw:
    """One call after the preamble: its batch and settings, then its size, the scheduler and the timesteps to run."""

    req: Request                  # prompts × num_images expanded, with the seeds, sampler and schedule
    steps: int                    # the schedule's length (num_inference_steps, the model's default filled in)
    guidance_scale: float
    guidance_rescale: float
    clip_skip: int
    width: int = 0
    height: int = 0
    scheduler: Any = None         # a diffusers scheduler with its timesteps set
    timesteps: torch.Tensor | None = None  # the ones that run: all of them, or the tail a strength keeps

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    def generators(self) -> list[torch.Generator]:
        return generators(self.req.seeds)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed (as diffusers with a list of generators)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


class PipelineBase:
    """What every mode shares: the components, device and dtype, LoRA and embeddings, and the stages in data-flow order."""

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
    def from_pretrained(cls: type[P], path: str | os.PathLike, *, device=None, dtype=None, attention: str = "sdpa",
                        allow_pickle: bool = False, prediction_type: str | None = None, fast: bool | None = None,
                        compile: bool = False, vae: str | os.PathLike | None = None) -> P:
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

    def to(self: P, device=None, dtype=None) -> P:
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
    def native_size(self) -> int:
        """The side in pixels the U-Net was trained at (its sample size × the VAE factor)."""
        return self.unet.config.sample_size * self.vae_scale_factor

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
            return sdxl_condition(self, prompts, negatives, guided, clip_skip, size or (self.native_size, self.native_size),
                                  micro_conditioning)
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
        gens = generators(seeds)
        c = self.unet.config.out_channels
        noise = draw_noise(gens, (len(gens), c, height // self.vae_scale_factor, width // self.vae_scale_factor))  # (B, C, h, w)
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

    # -- the preamble every mode runs, in order (then: generators, denoise, decode, output) ------------------------
    def sampling_settings(self, num_inference_steps: int | None, guidance_scale: float | None,
                          sampler: str | None) -> tuple[int, float, str]:
        """Fill what the caller left None: the model's generation_config.json, else latentdiff.defaults.SAMPLING_DEFAULTS."""
        d = {**SAMPLING_DEFAULTS, **self.components.generation}
        return (d["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
                d["guidance_scale"] if guidance_scale is None else guidance_scale, d["sampler"] if sampler is None else sampler)

    def request(self, prompt: str | list[str], negative_prompt: str | list[str], *, num_images: int, seed: int | None,
                num_inference_steps: int | None, guidance_scale: float | None, sampler: str | None, schedule: str,
                guidance_rescale: float, clip_skip: int) -> Draw:
        """1. settings (the caller's, else the model's) → 2. the request: prompts × num_images with their seeds, checked."""
        steps, guidance_scale, sampler = self.sampling_settings(num_inference_steps, guidance_scale, sampler)
        req = expand_request(prompt, negative_prompt, num_images, seed, steps, sampler, schedule)
        return Draw(req, steps, guidance_scale, guidance_rescale, clip_skip)

    def start(self, draw: Draw, width: int, height: int, strength: float | None = None) -> Draw:
        """3. size, guidance and memory checked → the scheduler, with the timesteps to run (the tail `strength` keeps)."""
        check_size(width, height, self.vae_scale_factor)
        check_guidance(draw.guidance_scale, draw.guidance_rescale)
        check_memory(self, width, height, len(draw.req.prompts))
        scheduler = self.scheduler_for(draw)
        draw.width, draw.height, draw.scheduler = width, height, scheduler
        draw.timesteps = scheduler.timesteps if strength is None else strength_timesteps(scheduler, draw.steps, strength)
        return draw

    def scheduler_for(self, draw: Draw):
        """The call's sampler and schedule on this pipeline's scheduler config, its `draw.steps` timesteps set."""
        scheduler = make_scheduler(draw.req.sampler, self.components.scheduler_config, draw.req.schedule)
        scheduler.set_timesteps(draw.steps, device=self.device)
        return scheduler

    def guided_model(self, draw: Draw, micro_conditioning=None, controls: list | None = None,
                     edit_steps: int = 0) -> tuple[CFGDenoiser, Callable | None, dict, list]:
        """4. text → (the U-Net under CFG, the on_step that switches prompt-edited embeddings, ControlNet PNG entries, records).

        The U-Net carries SDXL's added conditioning (condition) and the ControlNets (pipelines.control); `edit_steps`:
        the sampling steps prompt editing [from:to:when] and alternation [a|b] count (0: the texts as written).
        """
        req, guided = draw.req, draw.guided
        context, unet = self.condition(req.prompts, req.negatives, guided, draw.clip_skip, (draw.height, draw.width),
                                       micro_conditioning)
        contexts = step_contexts(self, req.prompts, req.negatives, guided, draw.clip_skip, edit_steps, first=context) \
            if edit_steps else [context]
        unet, control_extra, control_units = controlled_unet(self, controls, draw.width, draw.height, len(draw.timesteps),
                                                             guided, unet)
        model = CFGDenoiser(unet, contexts[0], draw.guidance_scale, draw.guidance_rescale, scheduler=draw.scheduler)
        return model, switcher(model, contexts, len(draw.timesteps)), control_extra, control_units

    def output(self, draw: Draw, images: list[Image.Image], extra: dict, control_units: list) -> PipelineOutput:
        """The images with a GenerationParams each: the call's settings, mode-specific ones in `extra`, the ControlNets."""
        params = request_params(self, draw.req, draw.steps, draw.guidance_scale, draw.width, draw.height,
                                draw.guidance_rescale, draw.clip_skip, extra)
        return PipelineOutput(images, with_controls(params, control_units))
