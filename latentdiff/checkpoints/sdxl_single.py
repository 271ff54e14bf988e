"""SDXL single files in the SGM/A1111 layout, read into Components and written back, with explicit key maps.

    model.diffusion_model.*                         U-Net (label_emb.0.{0,2} ⇄ add_embedding.linear_{1,2})
    conditioner.embedders.0.transformer.text_model.* CLIP ViT-L, already transformers' CLIPTextModel names (base)
    conditioner.embedders.1.model.*                 OpenCLIP ViT-bigG: fused in_proj, text_projection (base)
    conditioner.embedders.0.model.*                 the same bigG tower in the refiner, which has no CLIP ViT-L
    first_stage_model.*                             VAE

The kind (base, refiner, 9-channel inpainting) is read from the keys and shapes; what shapes cannot tell comes from
the presets in checkpoints/presets/ (sdxl_base.yaml, sdxl_refiner.yaml), overridden by configs our writer stores in the
file's metadata. Never a hub lookup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import LatentDiffError
from . import ldm_keys as K
from .presets import ASSETS_DIR, read_preset

CLIP_L = "conditioner.embedders.0.transformer.text_model."
CLIP_L_SHORT = "conditioner.embedders.0.transformer."
BIGG = {"sdxl": "conditioner.embedders.1.model.", "sdxl_refiner": "conditioner.embedders.0.model."}
PRESETS = {"sdxl": "sdxl_base", "sdxl_inpaint": "sdxl_base", "sdxl_refiner": "sdxl_refiner"}
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "options")
METADATA_KEY = "latentdiff_configs"  # the same metadata entry as SD1/SD2 files (single_file.METADATA_KEY)
IGNORED_PREFIXES = ("denoiser.", "model_ema.")  # SGM's sigma table; an EMA copy


def xl_family(keys: Iterable[str]) -> str | None:
    """"sdxl" (CLIP-L + bigG) or "sdxl_refiner" (bigG alone) from the conditioner keys; None for a non-SDXL file."""
    keys = list(keys)
    if not any(k.startswith("conditioner.embedders.") for k in keys):
        return None
    if any(k.startswith(BIGG["sdxl"]) for k in keys) and any(k.startswith(CLIP_L_SHORT) for k in keys):
        return "sdxl"
    if any(k.startswith(BIGG["sdxl_refiner"]) for k in keys):
        return "sdxl_refiner"
    embedders = sorted({".".join(k.split(".")[:4]) for k in keys if k.startswith("conditioner.embedders.")})
    raise LatentDiffError(f"an SGM checkpoint with conditioner embedders we do not know ({', '.join(embedders[:4])}); "
                          "SDXL base has CLIP ViT-L at 0 and OpenCLIP bigG at 1, the refiner bigG at 0")


def is_sdxl_file(path: Path) -> bool:
    """True for a .safetensors file whose keys are an SDXL checkpoint's (header only; pickles are read in full)."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return xl_family(f.keys()) is not None
    except LatentDiffError:
        return True
    except Exception:  # an unreadable file: let the ordinary reader give its one-line error
        return False


# ---------------------------------------------------------------- the bigG text tower


def bigg_layout(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[K.TextLayout, int]:
    """(layout with every resblock counted, projection width) of an OpenCLIP text tower; CLIPTextModelWithProjection
    keeps all its layers (SDXL reads the penultimate hidden state and pools after the last)."""
    what = "text encoder 2"
    vocab, hidden = K.shape_of(state, f"{prefix}token_embedding.weight", what)
    blocks = K._count(state, f"{prefix}transformer.resblocks.")
    if blocks < 2:
        raise LatentDiffError(f"{what}: {prefix}transformer has {blocks} resblocks; SDXL needs at least 2")
    t = K.TextLayout(vocab, hidden, K.shape_of(state, f"{prefix}transformer.resblocks.0.mlp.c_fc.weight", what)[0], blocks,
                     K.shape_of(state, f"{prefix}positional_embedding", what)[0])
    return t, K.shape_of(state, f"{prefix}text_projection", what)[1]


def bigg_entries(t: K.TextLayout, proj: int, prefix: str) -> list[K.Entry]:
    """OpenCLIP bigG ⇄ CLIPTextModelWithProjection: all resblocks, ln_final, text_projection (transposed)."""
    h, p = t.hidden_size, f"{prefix}transformer.resblocks"
    out = [K.Entry(f"{prefix}token_embedding.weight", ("embeddings.token_embedding.weight",), (t.vocab_size, h)),
           K.Entry(f"{prefix}positional_embedding", ("embeddings.position_embedding.weight",), (t.max_positions, h))]
    for n in range(t.num_layers):
        out += K._openclip_block(f"{p}.{n}", f"encoder.layers.{n}", t)
    return out + K._norm(f"{prefix}ln_final", "final_layer_norm", h) + [
        K.Entry(f"{prefix}text_projection", ("text_projection.weight",), (proj, h), "transpose"),
        K.Entry(f"{prefix}logit_scale", (), (), "unused")]


def bigg_layout_from_diffusers(state: Mapping[str, torch.Tensor]) -> tuple[K.TextLayout, int]:
    t = K.text_layout_from_diffusers(state)
    return t, K.shape_of(state, "text_projection.weight", "text encoder 2")[0]


# ---------------------------------------------------------------- reading


def _saved(path: Path) -> dict[str, dict]:
    """Component configs our writer stored in the file's metadata ({} for other files)."""
    from .single_file import _saved_configs

    return _saved_configs(path, PARTS)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_sdxl_file(path: str | os.PathLike, state: Mapping[str, torch.Tensor], *, prediction_type: str | None = None):
    """An SDXL single file's tensors → Components (U-Net ours, VAE/encoders diffusers/transformers), every tensor checked."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..models.unet import UNetConfig
    from .loader import Components, _load_text_state, build_unet, load_tokenizer
    from .single_file import _check_groups, _prediction, text_config, unet_config, vae_config

    path = Path(path)
    family = xl_family(state)
    u, v = K.unet_layout_from_ldm(state, added=True), K.vae_layout_from_ldm(state)
    kind = "sdxl_inpaint" if family == "sdxl" and u.in_channels == 2 * v.latent_channels + 1 else family
    preset, saved = read_preset(PRESETS[kind]), _saved(path)
    base = {part: {**(preset.get(part) or {}), **saved.get(part, {})} for part in PARTS}

    g, proj = bigg_layout(state, BIGG[family])
    entries = {"unet": K.unet_entries(u), "vae": K.vae_entries(v), "text_encoder_2": bigg_entries(g, proj, BIGG[family])}
    if family == "sdxl":
        prefix = CLIP_L if any(k.startswith(CLIP_L) for k in state) else CLIP_L_SHORT
        t = K.clip_layout_from_ldm(state, prefix)
        entries["text_encoder"] = K.clip_entries(t, prefix)
    ignored = {CLIP_L + "embeddings.position_ids", CLIP_L_SHORT + "embeddings.position_ids"}
    stray = K.first_unmapped((k for k in state if k not in ignored and not k.startswith(IGNORED_PREFIXES)),
                             [e for es in entries.values() for e in es])
    if stray is not None:
        raise LatentDiffError(f"{path}: unexpected key {stray} (not part of an SDXL U-Net, VAE or text encoder)")

    unet_cfg = {**unet_config(base["unet"], u), "addition_embed_type": "text_time",
                "addition_time_embed_dim": base["unet"].get("addition_time_embed_dim", 256),
                "projection_class_embeddings_input_dim": u.adm_in_channels}
    vae_cfg = vae_config(base["vae"], v)
    _check_groups(unet_cfg, "U-Net", "unet")
    _check_groups(vae_cfg, "VAE", "vae")
    unet = build_unet(UNetConfig.from_diffusers(unet_cfg), K.to_diffusers(state, entries["unet"], "U-Net"), f"{path} (U-Net)")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_cfg)
        first = CLIPTextModel(CLIPTextConfig(**text_config(base["text_encoder"], t))) if family == "sdxl" else None
        second = CLIPTextModelWithProjection(CLIPTextConfig(**{**text_config(base["text_encoder_2"], g), "projection_dim": proj}))
    vae.load_state_dict(K.to_diffusers(state, entries["vae"], "VAE"), strict=True, assign=True)
    for model, part in ((first, "text_encoder"), (second, "text_encoder_2")):
        if model is None:
            continue
        nested = "text_model.embeddings.token_embedding.weight" in model.state_dict()
        tensors = K.to_diffusers(state, entries[part], part.replace("_", " "))
        _load_text_state(model, {(("text_model." if nested and not k.startswith("text_projection") else "") + k): w
                                 for k, w in tensors.items()})
    scheduler = dict(base["scheduler"])
    if prediction_type:
        scheduler["prediction_type"] = _prediction(prediction_type, "prediction_type")
    tok = preset.get("tokenizer")
    return Components(unet, vae.eval(), first.eval() if first is not None else None,
                      load_tokenizer(ASSETS_DIR / tok, "sd1") if family == "sdxl" and tok else None, scheduler, kind=kind,
                      source=str(path), single_file=True, extra={**(preset.get("options") or {}), **base["options"]},
                      text_encoder_2=second.eval(), tokenizer_2=load_tokenizer(ASSETS_DIR / preset["tokenizer_2"], "sd2"))


# ---------------------------------------------------------------- writing


def write_sdxl_file(c, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Components of an SDXL model → one SGM/A1111-layout .safetensors (atomically), configs in its metadata."""
    from .single_file import _save_atomic

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LatentDiffError(f"{path}: single-file checkpoints are written as .safetensors")
    family = "sdxl_refiner" if c.text_encoder is None else "sdxl"
    unet_state, vae_state = c.unet.state_dict(), c.vae.state_dict()
    second = {k.removeprefix("text_model."): w for k, w in c.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
    g, proj = bigg_layout_from_diffusers(second)
    out = {**K.to_ldm(unet_state, K.unet_entries(K.unet_layout_from_diffusers(unet_state)), "U-Net"),
           **K.to_ldm(vae_state, K.vae_entries(K.vae_layout_from_diffusers(vae_state)), "VAE"),
           **K.to_ldm(second, bigg_entries(g, proj, BIGG[family]), "text encoder 2")}
    configs = {"unet": c.unet.config.to_diffusers(), "vae": dict(c.vae.config), "text_encoder_2": c.text_encoder_2.config.to_dict(),
               "scheduler": dict(c.scheduler_config),
               "options": {k: c.extra[k] for k in ("force_zeros_for_empty_prompt", "requires_aesthetics_score") if k in c.extra}}
    if c.text_encoder is not None:
        first = {k.removeprefix("text_model."): w for k, w in c.text_encoder.state_dict().items() if not k.endswith("position_ids")}
        out.update(K.to_ldm(first, K.clip_entries(K.text_layout_from_diffusers(first), CLIP_L), "text encoder"))
        configs["text_encoder"] = c.text_encoder.config.to_dict()
    out = {k: (w.to(dtype) if dtype is not None and w.is_floating_point() else w).detach().cpu().contiguous() for k, w in out.items()}
    try:
        meta = json.dumps(configs, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    except (TypeError, ValueError) as e:
        raise LatentDiffError(f"configs cannot be stored as JSON: {e}") from None
    _save_atomic(out, path, {"format": "pt", METADATA_KEY: meta})
    return path
