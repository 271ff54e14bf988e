"""Single-file LDM checkpoints (CompVis/A1111 layout): read them into diffusers components, write them back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import LatentDiffError
from ..fileio import atomic_write, read_yaml
from . import ldm_keys as K
from .presets import ASSETS_DIR, preset_path, read_preset

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PRESETS = {"sd1": "sd15", "sd2": "sd21"}  # kind → checkpoints/presets/<name>.yaml; SD2 with v-prediction → sd21-v
PREDICTION_TYPES = {"epsilon": "epsilon", "eps": "epsilon", "v_prediction": "v_prediction", "v": "v_prediction",
                    "sample": "sample", "x0": "sample"}  # diffusers names, and LDM's `parameterization` values
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")
METADATA_KEY = "latentdiff_configs"  # safetensors metadata: component configs written by write_single_file


@dataclass
class SingleFileComponents:
    """The parts of one LDM checkpoint as diffusers/transformers configs and state dicts."""

    kind: str                             # "sd1" (CLIP ViT-L text encoder) or "sd2" (OpenCLIP ViT-H)
    unet_config: dict[str, Any]           # as a diffusers unet/config.json
    unet_state: dict[str, torch.Tensor]   # UNet2DConditionModel names, dtype as stored
    vae_config: dict[str, Any]            # as a diffusers vae/config.json
    vae_state: dict[str, torch.Tensor]    # AutoencoderKL names
    text_config: dict[str, Any]           # keyword arguments of transformers' CLIPTextConfig
    text_state: dict[str, torch.Tensor]   # CLIPTextModel names, as the installed transformers spells them
    scheduler_config: dict[str, Any]      # as scheduler/scheduler_config.json, prediction_type set
    tokenizer_dir: Path                   # the CLIP tokenizer files we ship for this kind

    @property
    def prediction_type(self) -> str:
        """epsilon, v_prediction or sample."""
        return self.scheduler_config["prediction_type"]

    @property
    def inpainting(self) -> bool:
        """True for an inpainting U-Net (latents + mask + masked-image latents: 9 input channels)."""
        return self.unet_config["in_channels"] == 9


# ---------------------------------------------------------------- reading files


def load_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, or of a pickle (.ckpt/.pt/.pth/.bin) when allow_pickle is set."""
    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"no such checkpoint file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own types for short files and bad headers
            raise LatentDiffError(f"{path} is not a valid safetensors file: {_first_line(e)}") from None
    if suffix not in PICKLE_SUFFIXES:
        raise LatentDiffError(f"{path}: unsupported checkpoint type '{suffix}' (use .safetensors, or "
                              f"{'/'.join(PICKLE_SUFFIXES)} with --allow-pickle)")
    if not allow_pickle:
        raise LatentDiffError(f"{path} is a pickle, which can run code when loaded; pass --allow-pickle "
                              "(allow_pickle=True) to read it with torch.load(weights_only=True), or convert it to .safetensors")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LatentDiffError(f"{path} could not be read as a weights-only pickle: {_first_line(e)}") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning/CompVis wrap the weights with the training state
    if not isinstance(data, dict):
        raise LatentDiffError(f"{path} holds a {type(data).__name__}, not a state dict")
    bad = next((k for k, v in data.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise LatentDiffError(f"{path} does not hold a state dict of tensors (first other entry: {bad})")
    return data


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _saved_configs(path: Path, parts=None) -> dict[str, dict]:
    """Component configs our writer stored in the file's metadata ({} for other files); `parts` the names to keep."""
    if path.suffix.lower() != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    try:
        configs = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise LatentDiffError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON") from None
    return {k: v for k, v in configs.items() if k in (parts or COMPONENTS) and isinstance(v, dict)}


def _prediction(value: Any, source: str) -> str:
    if value not in PREDICTION_TYPES:
        raise LatentDiffError(f"{source}: unknown prediction type '{value}' (epsilon, v_prediction or sample)")
    return PREDICTION_TYPES[value]


def sidecar_prediction_type(path: Path) -> str | None:
    """`model.params.parameterization` of an A1111-style sidecar (model.yaml beside model.safetensors), if any."""
    side = path.with_suffix(".yaml")
    if not side.is_file():
        return None
    model = read_yaml(side).get("model")
    params = model.get("params") if isinstance(model, dict) else None
    value = params.get("parameterization") if isinstance(params, dict) else None
    return None if value is None else _prediction(value, str(side))


# ---------------------------------------------------------------- what a checkpoint is


def detect_kind(state: Mapping[str, torch.Tensor]) -> str:
    """"sd1" or "sd2", from the text encoder's keys and the U-Net's context width; LatentDiffError otherwise."""
    if any(k.startswith("conditioner.embedders.") for k in state):
        raise LatentDiffError("this is an SDXL-style checkpoint (conditioner.embedders.* keys); SDXL loads from "
                              ".safetensors files only: convert the pickle to .safetensors")
    if not any(k.startswith(K.UNET) for k in state):
        if "conv_in.weight" in state or any(k.startswith("down_blocks.") for k in state):
            raise LatentDiffError("this is a diffusers U-Net state dict, not an LDM checkpoint (no model.diffusion_model.* keys)")
        heads = sorted({k.split(".", 1)[0] for k in state})
        raise LatentDiffError(f"no Stable Diffusion U-Net (model.diffusion_model.*) among {len(state)} tensors; "
                              f"top-level names: {', '.join(heads[:6]) or 'none'}")
    to_k = next((k for k in state if k.startswith(K.UNET) and k.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise LatentDiffError("the U-Net has no cross-attention (attn2.to_k): not a text-conditioned SD 1.x/2.x model")
    context = state[to_k].shape[1]
    if any(k.startswith(K.OPENCLIP) for k in state):
        kind, width = "sd2", K.shape_of(state, f"{K.OPENCLIP}token_embedding.weight", "text encoder")[1]
    elif any(k.startswith(K.CLIP_SHORT) for k in state):
        prefix = K.clip_prefix(state)
        kind, width = "sd1", K.shape_of(state, f"{prefix}embeddings.token_embedding.weight", "text encoder")[1]
    elif context in (768, 1024):
        return "sd1" if context == 768 else "sd2"
    else:
        raise LatentDiffError(f"no text encoder (cond_stage_model.*) and a context width of {context}: "
                              "neither SD1 (768) nor SD2 (1024)")
    if width != context:
        raise LatentDiffError(f"text encoder width {width} does not match the U-Net's context width {context} ({to_k})")
    return kind


# ---------------------------------------------------------------- configs from the preset and the shapes


def unet_config(base: Mapping[str, Any], u: K.UNetLayout) -> dict[str, Any]:
    """The preset's U-Net config with the structure this checkpoint's shapes show."""
    c = list(u.block_out_channels)
    return {**base, "in_channels": u.in_channels, "out_channels": u.out_channels, "block_out_channels": c,
            "layers_per_block": u.layers_per_block, "cross_attention_dim": u.cross_attention_dim,
            "use_linear_projection": u.linear_projection,
            "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in u.transformer_depth],
            "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(u.transformer_depth)],
            "transformer_layers_per_block": _transformer_layers(u), "attention_head_dim": _unet_heads(base, c)}


def _unet_heads(base: Mapping[str, Any], c: list[int]) -> int | list[int]:
    """Heads per level ("attention_head_dim" in diffusers). The preset's value when the widths are the preset's;
    else SD1's head count (8) where it divides every width; else 64-d heads (SD2's rule), 1 head where the width
    is not a multiple of 64 (tiny models)."""
    given = base.get("attention_head_dim", 8)
    if list(base.get("block_out_channels", [])) == c:
        return given
    if isinstance(given, int) and all(w % given == 0 for w in c):
        return given
    return [w // 64 if w % 64 == 0 else 1 for w in c]


def _transformer_layers(u: K.UNetLayout) -> int | list[int]:
    """diffusers' transformer_layers_per_block: one number when uniform; the mid block uses the last level's."""
    depths = {d for d in u.transformer_depth if d} | {u.mid_depth}
    if len(depths) == 1:
        return u.mid_depth
    last = u.transformer_depth[-1]
    if last and last != u.mid_depth:
        raise LatentDiffError(f"U-Net: mid-block depth {u.mid_depth} differs from the last level's {last}, "
                              "which diffusers cannot express")
    return [d or 1 for d in u.transformer_depth[:-1]] + [u.mid_depth]


def vae_config(base: Mapping[str, Any], v: K.VaeLayout) -> dict[str, Any]:
    """The preset's VAE config with this checkpoint's widths and levels."""
    n = len(v.block_out_channels)
    return {**base, "in_channels": v.in_channels, "out_channels": v.out_channels, "latent_channels": v.latent_channels,
            "block_out_channels": list(v.block_out_channels), "layers_per_block": v.layers_per_block,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}


def text_config(base: Mapping[str, Any], t: K.TextLayout) -> dict[str, Any]:
    """The preset's CLIPTextConfig with this checkpoint's sizes. Heads cannot be seen in the weights: the preset's
    count when the width is the preset's (12 for ViT-L, 16 for ViT-H: 64-d heads), else width // 64, else 1."""
    h = t.hidden_size
    heads = base.get("num_attention_heads") if base.get("hidden_size") == h else (h // 64 if h % 64 == 0 else 1)
    return {**base, "vocab_size": t.vocab_size, "hidden_size": h, "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers, "max_position_embeddings": t.max_positions, "num_attention_heads": heads}


def _check_groups(cfg: Mapping[str, Any], what: str, part: str) -> None:
    groups = cfg.get("norm_num_groups", 32)
    bad = next((w for w in cfg["block_out_channels"] if w % groups), None)
    if bad is not None:
        raise LatentDiffError(f"{what}: norm_num_groups {groups} does not divide the width {bad}; "
                              f"pass overrides={{'{part}': {{'norm_num_groups': ...}}}}")


@lru_cache(maxsize=1)
def text_key_prefix() -> str:
    """"text_model." if the installed transformers nests CLIPTextModel's weights under it (before 5.6), else ""."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = CLIPTextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                          max_position_embeddings=4, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device("meta"):
        first = next(iter(CLIPTextModel(tiny).state_dict()))
    return "text_model." if first.startswith("text_model.") else ""


# ---------------------------------------------------------------- the two directions


def read_single_file(path: str | os.PathLike, *, allow_pickle: bool = False, prediction_type: str | None = None,
                     config: str | os.PathLike | None = None,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> SingleFileComponents:
    """Convert an LDM checkpoint into diffusers/transformers configs and state dicts, checking every tensor.

    prediction_type: wins over a sidecar YAML's `parameterization`, which wins over the preset's (epsilon).
    config: a preset name in configs/ or a YAML path; by default sd15, sd21, or sd21-v for v-prediction SD2.
    overrides: {"unet" | "vae" | "text_encoder" | "scheduler": {key: value}}, applied last (e.g. head counts).
    """
    path = Path(path)
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in COMPONENTS]
    if unknown:
        raise LatentDiffError(f"overrides: unknown component '{unknown[0]}' (one of {', '.join(COMPONENTS)})")
    state = load_state_dict(path, allow_pickle=allow_pickle)
    kind = detect_kind(state)
    saved = _saved_configs(path)
    prediction = (_prediction(prediction_type, "prediction_type") if prediction_type else None) or \
        sidecar_prediction_type(path) or saved.get("scheduler", {}).get("prediction_type")
    name = config or ("sd21-v" if kind == "sd2" and prediction == "v_prediction" else PRESETS[kind])
    preset = read_preset(name)
    if preset["kind"] != kind:
        raise LatentDiffError(f"{preset_path(name)} is a preset for {preset['kind']} but {path} is an {kind} checkpoint")

    u, v = K.unet_layout_from_ldm(state), K.vae_layout_from_ldm(state)
    t, text_entries = _text_map(state, kind)
    unet_entries, vae_entries = K.unet_entries(u), K.vae_entries(v)
    stray = K.first_unmapped(state, unet_entries + vae_entries + text_entries)
    if stray is not None:
        raise LatentDiffError(f"{path}: unexpected key {stray} (not part of an {kind.upper()} U-Net, VAE or text encoder)")

    base = {part: {**preset[part], **saved.get(part, {})} for part in COMPONENTS}  # preset < our own metadata
    prediction = prediction or base["scheduler"].get("prediction_type", "epsilon")
    configs = {"unet": unet_config(base["unet"], u), "vae": vae_config(base["vae"], v),
               "text_encoder": text_config(base["text_encoder"], t),
               "scheduler": {**base["scheduler"], "prediction_type": prediction}}
    configs = {part: {**cfg, **overrides.get(part, {})} for part, cfg in configs.items()}  # overrides win
    _check_groups(configs["unet"], "U-Net", "unet")
    _check_groups(configs["vae"], "VAE", "vae")
    configs["scheduler"]["prediction_type"] = _prediction(configs["scheduler"]["prediction_type"], "scheduler config")
    tp = text_key_prefix()
    return SingleFileComponents(
        kind=kind,
        unet_config=configs["unet"],
        unet_state=K.to_diffusers(state, unet_entries, "U-Net"),
        vae_config=configs["vae"],
        vae_state=K.to_diffusers(state, vae_entries, "VAE"),
        text_config=configs["text_encoder"],
        text_state={tp + k: w for k, w in K.to_diffusers(state, text_entries, "text encoder").items()},
        scheduler_config=configs["scheduler"],
        tokenizer_dir=ASSETS_DIR / preset["tokenizer"],
    )


def _text_map(state: Mapping[str, torch.Tensor], kind: str) -> tuple[K.TextLayout, list[K.Entry]]:
    """The text encoder's layout and key map: CLIP ViT-L layout for SD1, OpenCLIP for SD2."""
    if kind == "sd1":
        prefix = K.clip_prefix(state)
        t = K.clip_layout_from_ldm(state, prefix)
        return t, K.clip_entries(t, prefix)
    t = K.openclip_layout_from_ldm(state)
    return t, K.openclip_entries(t)


def write_single_file(path: str | os.PathLike, *, kind: str, unet_state: Mapping[str, torch.Tensor],
                      vae_state: Mapping[str, torch.Tensor], text_state: Mapping[str, torch.Tensor],
                      dtype: torch.dtype | None = None, configs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write diffusers/transformers state dicts as one LDM .safetensors checkpoint (atomically).

    SD2 files get placeholders for what SD2 does not use (the last OpenCLIP resblock as zeros, which is the
    identity; an identity text_projection; logit_scale), so CompVis/A1111 code finds every key it expects.
    configs: optional {"unet" | "vae" | "text_encoder" | "scheduler": dict} stored in the file's metadata, so
    that read_single_file restores what shapes cannot show (norm groups, heads, activation) for custom models.
    """
    path = Path(path)
    if kind not in PRESETS:
        raise LatentDiffError(f"unknown checkpoint kind '{kind}' (sd1 or sd2)")
    if path.suffix.lower() != ".safetensors":
        raise LatentDiffError(f"{path}: single-file checkpoints are written as .safetensors")
    text = {k.removeprefix("text_model."): w for k, w in text_state.items() if not k.endswith("embeddings.position_ids")}
    u, t = K.unet_layout_from_diffusers(unet_state), K.text_layout_from_diffusers(text)
    if u.cross_attention_dim != t.hidden_size:
        raise LatentDiffError(f"U-Net cross_attention_dim {u.cross_attention_dim} does not match "
                              f"the text encoder width {t.hidden_size}")
    out = {**K.to_ldm(unet_state, K.unet_entries(u), "U-Net"),
           **K.to_ldm(vae_state, K.vae_entries(K.vae_layout_from_diffusers(vae_state)), "VAE"),
           **K.to_ldm(text, K.clip_entries(t) if kind == "sd1" else K.openclip_entries(t), "text encoder")}
    out = {k: (w.to(dtype) if dtype is not None and w.is_floating_point() else w).detach().cpu().contiguous()
           for k, w in out.items()}
    metadata = {"format": "pt"}
    if configs:
        try:
            metadata[METADATA_KEY] = json.dumps({k: dict(v) for k, v in configs.items() if k in COMPONENTS})
        except (TypeError, ValueError) as e:
            raise LatentDiffError(f"configs cannot be stored as JSON: {_first_line(e)}") from None
    _save_atomic(out, path, metadata)
    return path


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file into a temporary file in the same folder, then rename it over the target."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
