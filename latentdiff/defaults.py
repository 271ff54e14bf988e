"""Sampling defaults in one place: what every entry point (Python API, CLI, server, replay, training previews) uses
where neither the caller nor the model folder says otherwise. Imports nothing (the low layer, beside fileio)."""

from __future__ import annotations

# diffusers' and A1111's usual choices; a model folder's generation_config.json overrides any subset of these keys.
SAMPLING_DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 7.5, "sampler": "dpmpp_2m"}
DEFAULT_SAMPLER = SAMPLING_DEFAULTS["sampler"]
GENERATION_CONFIG = "generation_config.json"  # in a model folder: its measured best settings, a subset of SAMPLING_DEFAULTS' keys
