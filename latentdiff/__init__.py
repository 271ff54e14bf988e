"""latentdiff: lean latent text-to-image diffusion. The public API, imported lazily so the CLI starts fast."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LatentDiffusionPipeline": "latentdiff.pipelines.pipeline",
    "PipelineOutput": "latentdiff.pipelines.base",
    "GenerationParams": "latentdiff.pipelines.png_metadata",
    "UNet": "latentdiff.models.unet",
    "UNetConfig": "latentdiff.models.unet",
    "load_components": "latentdiff.checkpoints",
    "save_diffusers_folder": "latentdiff.checkpoints",
    "save_single_file": "latentdiff.checkpoints",
    "SAMPLERS": "latentdiff.pipelines.samplers",
    "LatentDiffError": "latentdiff.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latentdiff' has no attribute {name!r}")
