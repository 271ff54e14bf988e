"""A separate VAE (`--vae PATH`): a diffusers vae folder, or a .safetensors VAE in diffusers or LDM/A1111 names.

Users swap in a fixed VAE (e.g. an fp16-safe SDXL VAE, or SD1's ft-MSE) for the one a checkpoint carries. The new
VAE takes the model's VAE config (architecture, scaling factor) unless it brings its own config.json; every tensor is
checked against that architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import LatentDiffError
from . import ldm_keys as K


def load_vae(path: str | os.PathLike, like):
    """An AutoencoderKL from `path`, shaped like the model's VAE `like` (its config fills what the file cannot say)."""
    from diffusers import AutoencoderKL

    from .loader import _read_json, read_safetensors

    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise LatentDiffError(f"{p} is not a VAE folder (no config.json)")
        try:
            return AutoencoderKL.from_pretrained(str(p), local_files_only=True).eval()
        except Exception as e:
            raise LatentDiffError(f"{p}: VAE could not be loaded ({str(e).splitlines()[0][:160]})") from None
    if not p.is_file():
        raise LatentDiffError(f"no such VAE path: {p}")
    if p.suffix.lower() != ".safetensors":
        raise LatentDiffError(f"{p}: a VAE file must be .safetensors (or give a diffusers vae folder)")
    state = read_safetensors(p)
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k.removeprefix("first_stage_model."): v for k, v in state.items() if k.startswith("first_stage_model.")}
    state = {k: v for k, v in state.items() if not k.startswith(("model_ema.", "loss."))}  # training leftovers
    if any(k.startswith("encoder.down.") for k in state):  # LDM/A1111 names: map with the checkpoint key map
        ldm = {K.VAE + k: v for k, v in state.items()}
        entries = K.vae_entries(K.vae_layout_from_ldm(ldm))
        stray = K.first_unmapped(ldm, entries)
        if stray is not None:
            raise LatentDiffError(f"{p}: unexpected key {stray.removeprefix(K.VAE)} (not part of a VAE)")
        state = K.to_diffusers(ldm, entries, f"VAE {p.name}")
    elif not any(k.startswith("encoder.down_blocks.") for k in state):
        raise LatentDiffError(f"{p} holds no VAE (neither encoder.down.* nor encoder.down_blocks.* keys)")
    config = dict(like.config)
    if (p.parent / "config.json").is_file() and p.parent.name == "vae":
        config.update(_read_json(p.parent / "config.json"))
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    expected = vae.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise LatentDiffError(f"{p}: this VAE does not fit the model's VAE ({'missing' if missing else 'unexpected'} "
                              f"key {(missing or unexpected)[0]})")
    bad = next((k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)), None)
    if bad is not None:
        raise LatentDiffError(f"{p}: VAE weight {bad} has shape {tuple(state[bad].shape)}, the model's VAE expects "
                              f"{tuple(expected[bad].shape)}")
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.eval()
