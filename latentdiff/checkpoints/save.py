"""Save loaded components: a diffusers folder (atomic) or one LDM-layout single file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..defaults import GENERATION_CONFIG
from ..fileio import atomic_folder
from .loader import Components


def save_single_file(c: Components, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write one LDM-layout `.safetensors` (A1111/CompVis keys); our component configs ride in its metadata."""
    from .single_file import write_single_file

    if c.is_sdxl:
        from .sdxl_single import write_sdxl_file

        return write_sdxl_file(c, path, dtype)
    configs = {"unet": c.unet.config.to_diffusers(), "vae": dict(c.vae.config),
               "text_encoder": c.text_encoder.config.to_dict(), "scheduler": dict(c.scheduler_config)}
    return write_single_file(path, kind=c.kind, unet_state=c.unet.state_dict(), vae_state=c.vae.state_dict(),
                             text_state=c.text_encoder.state_dict(), dtype=dtype, configs=configs)


def save_diffusers_folder(c: Components, path: str | os.PathLike) -> Path:
    """Write a folder that both we and diffusers' StableDiffusionPipeline load; atomic via a temp folder.

    A U-Net variant diffusers cannot express (docs/ARCHITECTURES.md) is written in our own config format; such a
    folder loads here only.
    """
    import diffusers

    path = Path(path)
    with atomic_folder(path) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "unet" / "config.json").write_text(json.dumps(c.unet.config.to_folder_config(), indent=2))
        save_file({k: v.contiguous() for k, v in c.unet.state_dict().items()}, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        c.vae.save_pretrained(str(tmp / "vae"))
        if c.text_encoder is not None:  # the SDXL refiner has only text_encoder_2
            c.text_encoder.save_pretrained(str(tmp / "text_encoder"))
            c.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "scheduler").mkdir()
        sched = {"_class_name": "PNDMScheduler", **{k: v for k, v in c.scheduler_config.items() if k != "_class_name"}}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "unet": ["latentdiff", "UNet"] if c.unet.config.variant_settings() else ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", sched["_class_name"]], "safety_checker": [None, None],
                 "feature_extractor": [None, None], "requires_safety_checker": False}
        if c.is_sdxl:
            from .sdxl import write_extras

            index = {k: v for k, v in index.items() if k not in ("safety_checker", "feature_extractor", "requires_safety_checker")}
            index.update(write_extras(c, tmp))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        if c.generation:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(c.generation, indent=2))
    return path
