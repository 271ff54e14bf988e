"""Explicit key map between A1111/lllyasviel single-file ControlNets (`control_model.*`) and diffusers' ControlNetModel.

The encoder's entries are the U-Net map's (ldm_keys.unet_entries) for conv_in, the time embedding, the down and
middle blocks, moved under `control_model.`; the hint encoder, the zero convolutions and the middle-block output
are added here. Every entry carries its shape, so both directions check every tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import LatentDiffError
from . import ldm_keys as K

PREFIX = "control_model."             # A1111 extension files (control_*.safetensors); lllyasviel's v1.1 .pth files have none
ENCODER = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")  # the U-Net parts a ControlNet copies
HINT = "input_hint_block."


@dataclass(frozen=True)
class ControlLayout:
    """What a ControlNet's names and shapes depend on: its encoder's U-Net layout and the hint encoder's widths."""

    unet: K.UNetLayout
    hint_channels: tuple[int, ...]  # conditioning_embedding_out_channels, e.g. (16, 32, 96, 256)
    conditioning_channels: int = 3


def controlnet_entries(c: ControlLayout) -> list[K.Entry]:
    """The ControlNet map (LDM keys with PREFIX)."""
    out = [K.Entry(PREFIX + e.ldm[len(K.UNET):], e.diffusers, e.shape, e.kind, e.checked)
           for e in K.unet_entries(c.unet) if e.diffusers and e.diffusers[0].startswith(ENCODER)]
    w, ch0 = c.hint_channels, c.unet.block_out_channels[0]
    emb = "controlnet_cond_embedding"
    out += K._conv(f"{PREFIX}{HINT}0", f"{emb}.conv_in", c.conditioning_channels, w[0])
    convs = [pair for a, b in zip(w[:-1], w[1:]) for pair in ((a, a), (a, b))]  # a 3×3 conv, then a strided one
    for i, (cin, cout) in enumerate(convs):  # LDM interleaves SiLUs: convs at 2, 4, 6, …
        out += K._conv(f"{PREFIX}{HINT}{2 + 2 * i}", f"{emb}.blocks.{i}", cin, cout)
    out += K._conv(f"{PREFIX}{HINT}{2 + 2 * len(convs)}", f"{emb}.conv_out", w[-1], ch0)
    for i, ch in enumerate(skip_channels(c.unet)):
        out += K._conv(f"{PREFIX}zero_convs.{i}.0", f"controlnet_down_blocks.{i}", ch, ch, k=1)
    mid = c.unet.block_out_channels[-1]
    return out + K._conv(f"{PREFIX}middle_block_out.0", "controlnet_mid_block", mid, mid, k=1)


def skip_channels(u: K.UNetLayout) -> list[int]:
    """Channels of each skip feature the U-Net keeps (conv_in's, then each resnet's and downsampler's)."""
    c = u.block_out_channels
    return [c[0]] + [ch for i, ch in enumerate(c) for _ in range(u.layers_per_block + (i < len(c) - 1))]


def normalize(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A ControlNet's tensors under PREFIX, whichever of the two single-file forms it came in; one-line error if none."""
    if f"{PREFIX}{HINT}0.weight" in state:
        return {k: v for k, v in state.items() if k.startswith(PREFIX)}  # full cldm files also hold the base model
    if f"{HINT}0.weight" in state:
        return {PREFIX + k: v for k, v in state.items()}
    if "controlnet_cond_embedding.conv_in.weight" in state:
        raise LatentDiffError(f"{source} holds diffusers-named ControlNet weights; put it in a folder with its config.json")
    raise LatentDiffError(f"{source} is not a ControlNet (no {PREFIX}{HINT} or {HINT} keys)")


def layout_from_ldm(state: Mapping[str, torch.Tensor], source: str) -> ControlLayout:
    """The layout of a normalized single-file ControlNet, read from its keys and shapes."""
    what = f"{source}: ControlNet"
    as_unet = {K.UNET + k[len(PREFIX):]: v for k, v in state.items()}
    as_unet[f"{K.UNET}out.2.weight"] = torch.empty(4, 1, 1, 1, device="meta")  # no output conv: say 4 channels
    u = K.unet_layout_from_ldm(as_unet)
    n = K._count(state, f"{PREFIX}{HINT}")  # conv, SiLU, … ending in the zero conv at n - 1
    if n < 5 or n % 2 == 0:
        raise LatentDiffError(f"{what}: {n} layers in {PREFIX}{HINT} do not form a hint encoder")
    convs = [K.shape_of(state, f"{PREFIX}{HINT}{i}.weight", what) for i in range(0, n - 1, 2)]
    widths = (convs[0][0],) + tuple(s[0] for s in convs[2::2])
    return ControlLayout(u, widths, convs[0][1])


def to_diffusers(state: Mapping[str, torch.Tensor], layout: ControlLayout, source: str) -> dict[str, torch.Tensor]:
    """Normalized LDM tensors → diffusers names, every tensor shape-checked; no key may be left over."""
    entries = controlnet_entries(layout)
    known = {e.ldm for e in entries}  # built once, not per key
    extra = next((k for k in state if k not in known), None)
    if extra is not None:
        raise LatentDiffError(f"{source}: unexpected ControlNet key {extra}")
    return K.to_diffusers(state, entries, f"{source}: ControlNet")


def to_ldm(state: Mapping[str, torch.Tensor], layout: ControlLayout) -> dict[str, torch.Tensor]:
    """diffusers names → the A1111 extension's `control_model.*` layout (the inverse of to_diffusers)."""
    return K.to_ldm(state, controlnet_entries(layout), "ControlNet")
