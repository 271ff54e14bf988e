"""kohya's SDXL LoRA names: `lora_te1_…` for CLIP ViT-L and the U-Net's SGM module names (`lora_unet_input_blocks_4_1_…`).

kohya's sd-scripts trains SDXL on the original SGM U-Net, so its files name U-Net layers as the single-file
checkpoint does; the checkpoint key map (checkpoints.ldm_keys.unet_entries) turns each into our diffusers name.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..checkpoints import ldm_keys as K
from .formats import KOHYA_PREFIX, LoraState, split_key, to_kohya


def unet_layout(config) -> K.UNetLayout:
    """The checkpoint layout of our U-Net config (what its SGM/LDM names depend on)."""
    depth = config.level_depth
    return K.UNetLayout(tuple(config.block_out_channels), config.layers_per_block,
                        tuple(d if a else 0 for d, a in zip(depth, config.attention_levels)), depth[-1],
                        config.cross_attention_dim, config.use_linear_projection, config.in_channels, config.out_channels,
                        config.projection_class_embeddings_input_dim or 0)


def sgm_names(unet: nn.Module) -> dict[str, str]:
    """'lora_unet_<SGM module with _>' → 'unet.<diffusers module>' for every weight of an SDXL U-Net ({} otherwise)."""
    config = unet.config
    if getattr(config, "addition_embed_type", None) != "text_time" or config.variant_settings():
        return {}
    out = {}
    for e in K.unet_entries(unet_layout(config)):
        if e.ldm.endswith(".weight") and len(e.diffusers) == 1:
            ldm = e.ldm[len(K.UNET):-len(".weight")]
            out[KOHYA_PREFIX["unet"] + ldm.replace(".", "_")] = "unet." + e.diffusers[0][:-len(".weight")]
    return out


def kohya_aliases(unet: nn.Module, module_keys: Iterable[str]) -> dict[str, str]:
    """Extra kohya names → module keys: `lora_te1_…` for the first text encoder, SGM names for an SDXL U-Net."""
    out = {"lora_te1_" + split_key(k)[1].replace(".", "_"): k for k in module_keys if split_key(k)[0] == "text_encoder"}
    return out | sgm_names(unet)


def to_kohya_sdxl(state: LoraState, unet: nn.Module) -> dict:
    """kohya tensors as sd-scripts writes SDXL LoRAs: SGM U-Net names, lora_te1_/lora_te2_ (true alphas)."""
    return to_kohya(state, names={key: name for name, key in kohya_aliases(unet, state).items()})


SDXL_MARKS = ("lora_te1_", "lora_te2_", "text_encoder_2.")  # names only SDXL LoRAs use


def refuse_sdxl_lora(path, model_is_sdxl: bool) -> None:
    """One line for an SDXL LoRA on an SD1/SD2 model (its te1/te2 names would otherwise half-match)."""
    from safetensors import safe_open

    from ..errors import LatentDiffError
    from .io import resolve_path

    if model_is_sdxl:
        return
    try:
        with safe_open(str(resolve_path(path)), framework="pt", device="cpu") as f:
            key = next((k for k in f.keys() if k.startswith(SDXL_MARKS)), None)
    except Exception:  # unreadable: read_lora gives the one-line error
        return
    if key is not None:
        raise LatentDiffError(f"this is an SDXL LoRA (key {key}); this model is not SDXL")
