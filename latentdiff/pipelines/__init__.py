"""Sampling: the pipeline (base + text-to-image, img2img, inpaint modes), samplers, guidance, PNG metadata."""

from __future__ import annotations

import importlib

_EXPORTS = {"LatentDiffusionPipeline": ".pipeline", "PipelineOutput": ".base"}


def __getattr__(name: str):
    """`from latentdiff.pipelines import LatentDiffusionPipeline`, imported on first use (the CLI starts fast)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
