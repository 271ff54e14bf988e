"""Load ControlNets from local paths: diffusers folders, and single files in the A1111/lllyasviel layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import LatentDiffError
from ..fileio import save_safetensors
from ..models.controlnet import ControlNet, ControlNetConfig
from ..models.unet import UNetConfig
from . import controlnet_keys as CK

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model"


def build_controlnet(config: ControlNetConfig, state: dict[str, torch.Tensor], source: str) -> ControlNet:
    """Our ControlNet from a state dict in diffusers' names (strict; see loader.build_on_meta)."""
    from .loader import build_on_meta

    return build_on_meta(lambda: ControlNet(config), state, source, "ControlNet")


def config_from_layout(layout: CK.ControlLayout, base: UNetConfig | None) -> ControlNetConfig:
    """What the keys say (widths, levels, attention), and what they cannot (heads, norm groups) from the base U-Net
    the ControlNet is used with, else SD's values (8 heads for 768-d text, 64-d heads otherwise; 32 groups)."""
    u, c = layout.unet, list(layout.unet.block_out_channels)
    depths = {d for d in u.transformer_depth if d} | {u.mid_depth}
    if len(depths) != 1:
        raise LatentDiffError(f"ControlNet transformer depths {sorted(depths)} differ per level; not supported")
    if base is not None and list(base.block_out_channels) == c and base.cross_attention_dim == u.cross_attention_dim:
        heads, groups, eps = base.num_heads, base.norm_num_groups, base.norm_eps
    else:
        heads = 8 if u.cross_attention_dim == 768 else tuple(max(1, w // 64) for w in c)
        groups, eps = 32, 1e-5
    unet = UNetConfig(in_channels=u.in_channels, block_out_channels=tuple(c), layers_per_block=u.layers_per_block,
                      attention_levels=tuple(d > 0 for d in u.transformer_depth), num_heads=heads,
                      cross_attention_dim=u.cross_attention_dim, transformer_depth=depths.pop(),
                      use_linear_projection=u.linear_projection, norm_num_groups=groups, norm_eps=eps)
    return ControlNetConfig(unet=unet, conditioning_channels=layout.conditioning_channels,
                            conditioning_embedding_out_channels=layout.hint_channels)


def load_controlnet(path: str | os.PathLike, *, allow_pickle: bool = False, base: UNetConfig | None = None) -> ControlNet:
    """A ControlNet from a diffusers folder (config.json + weights) or a single file (`control_model.*` keys or
    lllyasviel's unprefixed ones; `.pth`/`.ckpt` only with allow_pickle, then read with weights_only=True)."""
    from .loader import _read_json, _read_weights, _weights_file
    from .single_file import load_state_dict

    path = Path(path)
    if path.is_dir():
        config = ControlNetConfig.from_diffusers(_read_json(path / CONFIG))
        return build_controlnet(config, _read_weights(_weights_file(path, WEIGHTS, allow_pickle)), str(path))
    if not path.exists():
        raise LatentDiffError(f"no such ControlNet: {path}")
    state = CK.normalize(load_state_dict(path, allow_pickle=allow_pickle), str(path))
    if f"{CK.PREFIX}label_emb.0.0.weight" in state:
        raise LatentDiffError(f"{path} is an SDXL ControlNet in the single-file layout; SDXL ControlNets load from "
                              "diffusers folders only (config.json + diffusion_pytorch_model.safetensors)")
    layout = CK.layout_from_ldm(state, str(path))
    return build_controlnet(config_from_layout(layout, base), CK.to_diffusers(state, layout, str(path)), str(path))


def layout_of(net: ControlNet) -> CK.ControlLayout:
    c = net.config.unet
    depth = tuple(c.transformer_depth if a else 0 for a in c.attention_levels)
    u = CK.K.UNetLayout(c.block_out_channels, c.layers_per_block, depth, c.transformer_depth, c.cross_attention_dim,
                        c.use_linear_projection, c.in_channels, 4)
    return CK.ControlLayout(u, net.config.conditioning_embedding_out_channels, net.config.conditioning_channels)


def save_controlnet_single_file(net: ControlNet, path: str | os.PathLike, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write the A1111 extension's layout (`control_model.*`, fp16 by default), as its published files are."""
    state = CK.to_ldm(net.state_dict(), layout_of(net))
    state = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
    return save_safetensors(state, path)


def save_controlnet_folder(net: ControlNet, path: str | os.PathLike) -> Path:
    """Write a diffusers ControlNet folder (diffusers' ControlNetModel.from_pretrained loads it too)."""
    from ..fileio import atomic_folder

    path = Path(path)
    with atomic_folder(path) as tmp:
        (tmp / CONFIG).write_text(json.dumps(net.config.to_diffusers(), indent=2))
        save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / f"{WEIGHTS}.safetensors")
    return path


__all__ = ["build_controlnet", "load_controlnet", "save_controlnet_folder", "save_controlnet_single_file"]
