"""Explicit key maps between single-file LDM checkpoints (CompVis/A1111) and diffusers/transformers names.

Each component's map is a list of `Entry`s built by a loop over the network's blocks from a small layout
(channels, levels, layers per block, attention depth). An entry names one LDM tensor, the diffusers
tensor(s) it becomes and the shape they must have, so both directions check every tensor.

Over ~400 lines on purpose: the maps, the layout readers (which read the very keys the maps name) and the two
conversion directions must agree key for key, and a reader checks one against the other in one file. Each section is
one component (U-Net, VAE, text encoders) or one direction; the SDXL and ControlNet maps build on it in their own files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import LatentDiffError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."  # SD1; some files lack "text_model."
CLIP_SHORT = "cond_stage_model.transformer."
OPENCLIP = "cond_stage_model.model."  # SD2

# Tensors an LDM file may carry that no component needs.
SCHEDULE_BUFFERS = frozenset({  # the DDPM schedule, rebuilt by the scheduler from its config
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
})
IGNORED_PREFIXES = ("model_ema.",)  # the EMA copy of the U-Net; like diffusers we read the regular weights
IGNORED_KEYS = SCHEDULE_BUFFERS | {CLIP + "embeddings.position_ids", CLIP_SHORT + "embeddings.position_ids"}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    """One LDM tensor and the diffusers tensor(s) it corresponds to."""

    ldm: str                    # full LDM key, e.g. "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    diffusers: tuple[str, ...]  # one name; three for a fused q/k/v; none for a tensor SD does not use
    shape: Shape                # shape of each diffusers tensor (of the LDM tensor for an unused one)
    kind: str = "copy"          # copy | conv1x1 (LDM 1x1 conv ⇄ Linear) | qkv (fused in_proj ⇄ q, k, v) | unused
                                # | transpose (OpenCLIP's x @ P ⇄ Linear weight Pᵀ)
    checked: bool = True        # False: any shape is accepted on read (OpenCLIP's text_projection)

    @property
    def ldm_shape(self) -> Shape:
        """The shape the LDM tensor must have."""
        if self.kind == "conv1x1":
            return (*self.shape, 1, 1)
        if self.kind == "qkv":
            return (3 * self.shape[0], *self.shape[1:])
        if self.kind == "transpose":
            return self.shape[::-1]
        return self.shape


# ---------------------------------------------------------------- building blocks of the maps


def _params(ldm: str, dif: str, weight: Shape, bias: Shape | None, kind: str = "copy") -> list[Entry]:
    """A module's weight (and bias) under its LDM and diffusers names."""
    out = [Entry(f"{ldm}.weight", (f"{dif}.weight",), weight, kind)]
    if bias is not None:
        out.append(Entry(f"{ldm}.bias", (f"{dif}.bias",), bias))
    return out


def _conv(ldm: str, dif: str, cin: int, cout: int, k: int = 3) -> list[Entry]:
    return _params(ldm, dif, (cout, cin, k, k), (cout,))


def _linear(ldm: str, dif: str, cin: int, cout: int, bias: bool = True) -> list[Entry]:
    return _params(ldm, dif, (cout, cin), (cout,) if bias else None)


def _norm(ldm: str, dif: str, c: int) -> list[Entry]:
    return _params(ldm, dif, (c,), (c,))


# ---------------------------------------------------------------- U-Net


@dataclass(frozen=True)
class UNetLayout:
    """What the U-Net's names and shapes depend on; the rest of its config changes neither."""

    block_out_channels: tuple[int, ...]  # per level, e.g. (320, 640, 1280, 1280)
    layers_per_block: int                # resnets per down level (up levels have one more)
    transformer_depth: tuple[int, ...]   # transformer blocks after each resnet, per level; 0 = no attention
    mid_depth: int                       # transformer blocks in the middle block
    cross_attention_dim: int             # text embedding width (768 SD1, 1024 SD2)
    linear_projection: bool              # proj_in/proj_out are Linear (SD2) rather than 1x1 convs (SD1)
    in_channels: int = 4                 # 9 for inpainting
    out_channels: int = 4
    adm_in_channels: int = 0             # SDXL's added embedding input (label_emb ⇄ add_embedding); 0 = none


def _unet_resnet(ldm: str, dif: str, cin: int, cout: int, temb: int) -> list[Entry]:
    """LDM ResBlock ⇄ diffusers ResnetBlock2D."""
    out = (_norm(f"{ldm}.in_layers.0", f"{dif}.norm1", cin)
           + _conv(f"{ldm}.in_layers.2", f"{dif}.conv1", cin, cout)
           + _linear(f"{ldm}.emb_layers.1", f"{dif}.time_emb_proj", temb, cout)
           + _norm(f"{ldm}.out_layers.0", f"{dif}.norm2", cout)
           + _conv(f"{ldm}.out_layers.3", f"{dif}.conv2", cout, cout))
    if cin != cout:
        out += _conv(f"{ldm}.skip_connection", f"{dif}.conv_shortcut", cin, cout, k=1)
    return out


def _transformer(ldm: str, dif: str, c: int, depth: int, u: UNetLayout) -> list[Entry]:
    """SpatialTransformer ⇄ Transformer2DModel: the names below the block are the same on both sides."""
    def same(name: str, cin: int, cout: int, bias: bool = True) -> list[Entry]:
        return _linear(f"{ldm}.{name}", f"{dif}.{name}", cin, cout, bias)

    proj = (lambda name: same(name, c, c)) if u.linear_projection else (
        lambda name: _conv(f"{ldm}.{name}", f"{dif}.{name}", c, c, k=1))
    out = _norm(f"{ldm}.norm", f"{dif}.norm", c) + proj("proj_in")
    for b in range(depth):
        t = f"transformer_blocks.{b}"
        for attn, ctx in (("attn1", c), ("attn2", u.cross_attention_dim)):  # self-attention, then cross-attention
            out += same(f"{t}.{attn}.to_q", c, c, bias=False)
            out += same(f"{t}.{attn}.to_k", ctx, c, bias=False) + same(f"{t}.{attn}.to_v", ctx, c, bias=False)
            out += same(f"{t}.{attn}.to_out.0", c, c)
        for n in (1, 2, 3):
            out += _norm(f"{ldm}.{t}.norm{n}", f"{dif}.{t}.norm{n}", c)
        out += same(f"{t}.ff.net.0.proj", c, 8 * c) + same(f"{t}.ff.net.2", 4 * c, c)  # GEGLU: 2 x 4c out
    return out + proj("proj_out")


def unet_entries(u: UNetLayout) -> list[Entry]:
    """The U-Net map: input_blocks/middle_block/output_blocks ⇄ down_blocks/mid_block/up_blocks."""
    c, lpb = u.block_out_channels, u.layers_per_block
    temb, levels = 4 * c[0], len(c)
    out = (_linear(f"{UNET}time_embed.0", "time_embedding.linear_1", c[0], temb)
           + _linear(f"{UNET}time_embed.2", "time_embedding.linear_2", temb, temb)
           + _conv(f"{UNET}input_blocks.0.0", "conv_in", u.in_channels, c[0]))
    if u.adm_in_channels:  # SDXL: pooled text + micro-conditioning features → MLP
        out += (_linear(f"{UNET}label_emb.0.0", "add_embedding.linear_1", u.adm_in_channels, temb)
                + _linear(f"{UNET}label_emb.0.2", "add_embedding.linear_2", temb, temb))
    skips = [c[0]]  # channels of every down-path output the up path concatenates back, in push order
    block, cin = 1, c[0]
    for level, cout in enumerate(c):  # input_blocks: per level, lpb x [resnet, transformer?], then a downsampler
        for j in range(lpb):
            ldm, dif = f"{UNET}input_blocks.{block}", f"down_blocks.{level}"
            out += _unet_resnet(f"{ldm}.0", f"{dif}.resnets.{j}", cin, cout, temb)
            if u.transformer_depth[level]:
                out += _transformer(f"{ldm}.1", f"{dif}.attentions.{j}", cout, u.transformer_depth[level], u)
            cin, block = cout, block + 1
            skips.append(cout)
        if level < levels - 1:
            out += _conv(f"{UNET}input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv", cout, cout)
            block += 1
            skips.append(cout)
    out += (_unet_resnet(f"{UNET}middle_block.0", "mid_block.resnets.0", c[-1], c[-1], temb)
            + _transformer(f"{UNET}middle_block.1", "mid_block.attentions.0", c[-1], u.mid_depth, u)
            + _unet_resnet(f"{UNET}middle_block.2", "mid_block.resnets.1", c[-1], c[-1], temb))
    block, prev = 0, c[-1]
    for i, level in enumerate(reversed(range(levels))):  # output_blocks: deepest level first, lpb + 1 per level
        cout, dif = c[level], f"up_blocks.{i}"
        for j in range(lpb + 1):
            ldm = f"{UNET}output_blocks.{block}"
            out += _unet_resnet(f"{ldm}.0", f"{dif}.resnets.{j}", prev + skips.pop(), cout, temb)
            sub = 1
            if u.transformer_depth[level]:
                out += _transformer(f"{ldm}.1", f"{dif}.attentions.{j}", cout, u.transformer_depth[level], u)
                sub = 2
            prev, block = cout, block + 1
        if level > 0:  # the upsampler sits in the level's last output block, after its resnet (and transformer)
            out += _conv(f"{UNET}output_blocks.{block - 1}.{sub}.conv", f"{dif}.upsamplers.0.conv", cout, cout)
    return out + _norm(f"{UNET}out.0", "conv_norm_out", c[0]) + _conv(f"{UNET}out.2", "conv_out", c[0], u.out_channels)


# ---------------------------------------------------------------- VAE


@dataclass(frozen=True)
class VaeLayout:
    """What the VAE's names and shapes depend on."""

    block_out_channels: tuple[int, ...]  # per level, e.g. (128, 256, 512, 512)
    layers_per_block: int                # encoder resnets per level (the decoder has one more)
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4


def _vae_resnet(ldm: str, dif: str, cin: int, cout: int) -> list[Entry]:
    """LDM ResnetBlock ⇄ diffusers ResnetBlock2D (no time embedding)."""
    out = (_norm(f"{ldm}.norm1", f"{dif}.norm1", cin) + _conv(f"{ldm}.conv1", f"{dif}.conv1", cin, cout)
           + _norm(f"{ldm}.norm2", f"{dif}.norm2", cout) + _conv(f"{ldm}.conv2", f"{dif}.conv2", cout, cout))
    if cin != cout:
        out += _conv(f"{ldm}.nin_shortcut", f"{dif}.conv_shortcut", cin, cout, k=1)
    return out


def _vae_mid(part: str, c: int) -> list[Entry]:
    """mid.block_1, mid.attn_1, mid.block_2 ⇄ mid_block; attention q/k/v/proj_out are 1x1 convs in LDM."""
    ldm, dif = f"{VAE}{part}.mid", f"{part}.mid_block"
    attn = _norm(f"{ldm}.attn_1.norm", f"{dif}.attentions.0.group_norm", c)
    for old, new in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        attn += _params(f"{ldm}.attn_1.{old}", f"{dif}.attentions.0.{new}", (c, c), (c,), kind="conv1x1")
    return (_vae_resnet(f"{ldm}.block_1", f"{dif}.resnets.0", c, c) + attn
            + _vae_resnet(f"{ldm}.block_2", f"{dif}.resnets.1", c, c))


def vae_entries(v: VaeLayout) -> list[Entry]:
    """The VAE map: encoder.down.N / decoder.up.N ⇄ encoder.down_blocks / decoder.up_blocks (up is reversed)."""
    c, lpb, z = v.block_out_channels, v.layers_per_block, v.latent_channels
    levels = len(c)
    out = _conv(f"{VAE}encoder.conv_in", "encoder.conv_in", v.in_channels, c[0])
    cin = c[0]
    for i, cout in enumerate(c):
        for j in range(lpb):
            out += _vae_resnet(f"{VAE}encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", cin, cout)
            cin = cout
        if i < levels - 1:
            out += _conv(f"{VAE}encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout)
    out += (_vae_mid("encoder", c[-1]) + _norm(f"{VAE}encoder.norm_out", "encoder.conv_norm_out", c[-1])
            + _conv(f"{VAE}encoder.conv_out", "encoder.conv_out", c[-1], 2 * z)  # mean and log-variance
            + _conv(f"{VAE}quant_conv", "quant_conv", 2 * z, 2 * z, k=1)
            + _conv(f"{VAE}post_quant_conv", "post_quant_conv", z, z, k=1)
            + _conv(f"{VAE}decoder.conv_in", "decoder.conv_in", z, c[-1]) + _vae_mid("decoder", c[-1]))
    cin = c[-1]
    for i, level in enumerate(reversed(range(levels))):  # LDM numbers decoder levels bottom-up, diffusers top-down
        cout = c[level]
        for j in range(lpb + 1):
            out += _vae_resnet(f"{VAE}decoder.up.{level}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", cin, cout)
            cin = cout
        if level > 0:
            out += _conv(f"{VAE}decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout)
    return (out + _norm(f"{VAE}decoder.norm_out", "decoder.conv_norm_out", c[0])
            + _conv(f"{VAE}decoder.conv_out", "decoder.conv_out", c[0], v.out_channels))


# ---------------------------------------------------------------- text encoders


@dataclass(frozen=True)
class TextLayout:
    """What a CLIP text encoder's names and shapes depend on (diffusers/transformers side)."""

    vocab_size: int         # 49408
    hidden_size: int        # 768 (CLIP ViT-L, SD1) or 1024 (OpenCLIP ViT-H, SD2)
    intermediate_size: int  # MLP width, 4 x hidden
    num_layers: int         # transformer layers CLIPTextModel has (SD2: one fewer than OpenCLIP's resblocks)
    max_positions: int = 77


def _clip_layer(ldm: str, dif: str, t: TextLayout) -> list[Entry]:
    """One transformers CLIPEncoderLayer; `ldm` and `dif` name the same layer in the two layouts."""
    h, m = t.hidden_size, t.intermediate_size
    out = []
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out += _linear(f"{ldm}.self_attn.{proj}", f"{dif}.self_attn.{proj}", h, h)
    return (out + _norm(f"{ldm}.layer_norm1", f"{dif}.layer_norm1", h) + _norm(f"{ldm}.layer_norm2", f"{dif}.layer_norm2", h)
            + _linear(f"{ldm}.mlp.fc1", f"{dif}.mlp.fc1", h, m) + _linear(f"{ldm}.mlp.fc2", f"{dif}.mlp.fc2", m, h))


def clip_entries(t: TextLayout, prefix: str = CLIP) -> list[Entry]:
    """SD1: cond_stage_model.transformer.text_model.* is a transformers CLIPTextModel already; drop the prefix."""
    h = t.hidden_size
    out = (_params(f"{prefix}embeddings.token_embedding", "embeddings.token_embedding", (t.vocab_size, h), None)
           + _params(f"{prefix}embeddings.position_embedding", "embeddings.position_embedding", (t.max_positions, h), None))
    for n in range(t.num_layers):
        out += _clip_layer(f"{prefix}encoder.layers.{n}", f"encoder.layers.{n}", t)
    return out + _norm(f"{prefix}final_layer_norm", "final_layer_norm", h)


def _openclip_block(ldm: str, dif: str, t: TextLayout) -> list[Entry]:
    """One OpenCLIP ResidualAttentionBlock ⇄ CLIPEncoderLayer: in_proj holds q, k and v stacked on dim 0."""
    h, m = t.hidden_size, t.intermediate_size
    qkv = tuple(f"{dif}.self_attn.{p}_proj" for p in "qkv")
    return [Entry(f"{ldm}.attn.in_proj_weight", tuple(f"{n}.weight" for n in qkv), (h, h), "qkv"),
            Entry(f"{ldm}.attn.in_proj_bias", tuple(f"{n}.bias" for n in qkv), (h,), "qkv"),
            *_linear(f"{ldm}.attn.out_proj", f"{dif}.self_attn.out_proj", h, h),
            *_norm(f"{ldm}.ln_1", f"{dif}.layer_norm1", h), *_norm(f"{ldm}.ln_2", f"{dif}.layer_norm2", h),
            *_linear(f"{ldm}.mlp.c_fc", f"{dif}.mlp.fc1", h, m), *_linear(f"{ldm}.mlp.c_proj", f"{dif}.mlp.fc2", m, h)]


def openclip_entries(t: TextLayout) -> list[Entry]:
    """SD2: OpenCLIP's text tower ⇄ CLIPTextModel. SD2 reads the penultimate layer, so the last resblock,
    text_projection and logit_scale are unused (diffusers' SD2 text encoder has 23 of ViT-H's 24 layers)."""
    h, p = t.hidden_size, f"{OPENCLIP}transformer.resblocks"
    out = [Entry(f"{OPENCLIP}token_embedding.weight", ("embeddings.token_embedding.weight",), (t.vocab_size, h)),
           Entry(f"{OPENCLIP}positional_embedding", ("embeddings.position_embedding.weight",), (t.max_positions, h))]
    for n in range(t.num_layers):
        out += _openclip_block(f"{p}.{n}", f"encoder.layers.{n}", t)
    out += _norm(f"{OPENCLIP}ln_final", "final_layer_norm", h)
    unused = [Entry(e.ldm, (), e.ldm_shape, "unused") for e in _openclip_block(f"{p}.{t.num_layers}", "", t)]
    return out + unused + [Entry(f"{OPENCLIP}text_projection", (), (h, h), "unused", checked=False),
                           Entry(f"{OPENCLIP}logit_scale", (), (), "unused")]


# ---------------------------------------------------------------- layouts read from state dicts


def shape_of(state: Mapping[str, torch.Tensor], key: str, what: str) -> Shape:
    """The shape of state[key]; LatentDiffError naming the key when it is missing."""
    if key not in state:
        raise LatentDiffError(f"{what}: missing key {key}")
    return tuple(state[key].shape)


def _count(state: Iterable[str], prefix: str) -> int:
    """1 + the largest N among keys "<prefix>N.…" (0 if none): how many numbered children a module has."""
    found = [k[len(prefix):].split(".", 1)[0] for k in state if k.startswith(prefix)]
    return 1 + max((int(n) for n in found if n.isdigit()), default=-1)


def unet_layout_from_ldm(state: Mapping[str, torch.Tensor], added: bool = False) -> UNetLayout:
    """Levels, widths and attention of an LDM U-Net, read from its keys and shapes; `added`: SDXL's label_emb too."""
    what = "U-Net"
    n_in = _count(state, f"{UNET}input_blocks.")  # conv_in + levels * lpb resnets + (levels - 1) downsamplers
    levels = 1 + sum(f"{UNET}input_blocks.{i}.0.op.weight" in state for i in range(n_in))
    if n_in < 2 or n_in % levels:
        raise LatentDiffError(f"{what}: {n_in} input blocks do not form {levels} levels of equal depth")
    lpb = n_in // levels - 1
    first = [1 + level * (lpb + 1) for level in range(levels)]  # each level's first input block
    mid = f"{UNET}middle_block.1"
    return UNetLayout(
        block_out_channels=tuple(shape_of(state, f"{UNET}input_blocks.{b}.0.out_layers.3.weight", what)[0] for b in first),
        layers_per_block=lpb,
        transformer_depth=tuple(_count(state, f"{UNET}input_blocks.{b}.1.transformer_blocks.") for b in first),
        mid_depth=_count(state, f"{mid}.transformer_blocks."),
        cross_attention_dim=shape_of(state, f"{mid}.transformer_blocks.0.attn2.to_k.weight", what)[1],
        linear_projection=len(shape_of(state, f"{mid}.proj_in.weight", what)) == 2,
        in_channels=shape_of(state, f"{UNET}input_blocks.0.0.weight", what)[1],
        out_channels=shape_of(state, f"{UNET}out.2.weight", what)[0],
        adm_in_channels=shape_of(state, f"{UNET}label_emb.0.0.weight", what)[1] if added else 0,
    )


def unet_layout_from_diffusers(state: Mapping[str, torch.Tensor]) -> UNetLayout:
    """The same layout read from a diffusers UNet2DConditionModel state dict."""
    what, levels = "U-Net", _count(state, "down_blocks.")
    mid = "mid_block.attentions.0"
    return UNetLayout(
        block_out_channels=tuple(shape_of(state, f"down_blocks.{i}.resnets.0.conv1.weight", what)[0] for i in range(levels)),
        layers_per_block=_count(state, "down_blocks.0.resnets."),
        transformer_depth=tuple(_count(state, f"down_blocks.{i}.attentions.0.transformer_blocks.") for i in range(levels)),
        mid_depth=_count(state, f"{mid}.transformer_blocks."),
        cross_attention_dim=shape_of(state, f"{mid}.transformer_blocks.0.attn2.to_k.weight", what)[1],
        linear_projection=len(shape_of(state, f"{mid}.proj_in.weight", what)) == 2,
        in_channels=shape_of(state, "conv_in.weight", what)[1],
        out_channels=shape_of(state, "conv_out.weight", what)[0],
        adm_in_channels=shape_of(state, "add_embedding.linear_1.weight", what)[1] if "add_embedding.linear_1.weight" in state else 0,
    )


def vae_layout_from_ldm(state: Mapping[str, torch.Tensor]) -> VaeLayout:
    """Levels and widths of an LDM VAE."""
    what, levels = "VAE", _count(state, f"{VAE}encoder.down.")
    return VaeLayout(
        block_out_channels=tuple(shape_of(state, f"{VAE}encoder.down.{i}.block.0.conv2.weight", what)[0] for i in range(levels)),
        layers_per_block=_count(state, f"{VAE}encoder.down.0.block."),
        in_channels=shape_of(state, f"{VAE}encoder.conv_in.weight", what)[1],
        out_channels=shape_of(state, f"{VAE}decoder.conv_out.weight", what)[0],
        latent_channels=shape_of(state, f"{VAE}post_quant_conv.weight", what)[0],
    )


def vae_layout_from_diffusers(state: Mapping[str, torch.Tensor]) -> VaeLayout:
    """The same layout read from a diffusers AutoencoderKL state dict."""
    what, levels = "VAE", _count(state, "encoder.down_blocks.")
    return VaeLayout(
        block_out_channels=tuple(shape_of(state, f"encoder.down_blocks.{i}.resnets.0.conv2.weight", what)[0] for i in range(levels)),
        layers_per_block=_count(state, "encoder.down_blocks.0.resnets."),
        in_channels=shape_of(state, "encoder.conv_in.weight", what)[1],
        out_channels=shape_of(state, "decoder.conv_out.weight", what)[0],
        latent_channels=shape_of(state, "post_quant_conv.weight", what)[0],
    )


def clip_prefix(state: Iterable[str]) -> str:
    """Where an SD1 file keeps its CLIPTextModel: with or without the "text_model." level."""
    return CLIP if any(k.startswith(CLIP) for k in state) else CLIP_SHORT


def clip_layout_from_ldm(state: Mapping[str, torch.Tensor], prefix: str = CLIP) -> TextLayout:
    """Width, depth and vocabulary of an SD1 (CLIP ViT-L layout) text encoder."""
    what = "text encoder"
    vocab, hidden = shape_of(state, f"{prefix}embeddings.token_embedding.weight", what)
    return TextLayout(vocab, hidden, shape_of(state, f"{prefix}encoder.layers.0.mlp.fc1.weight", what)[0],
                      _count(state, f"{prefix}encoder.layers."),
                      shape_of(state, f"{prefix}embeddings.position_embedding.weight", what)[0])


def openclip_layout_from_ldm(state: Mapping[str, torch.Tensor]) -> TextLayout:
    """Width, depth and vocabulary of an SD2 (OpenCLIP layout) text encoder; the last resblock is not counted."""
    what = "text encoder"
    vocab, hidden = shape_of(state, f"{OPENCLIP}token_embedding.weight", what)
    blocks = _count(state, f"{OPENCLIP}transformer.resblocks.")
    if blocks < 2:
        raise LatentDiffError(f"{what}: {OPENCLIP}transformer has {blocks} resblocks; SD2 needs at least 2")
    return TextLayout(vocab, hidden, shape_of(state, f"{OPENCLIP}transformer.resblocks.0.mlp.c_fc.weight", what)[0],
                      blocks - 1, shape_of(state, f"{OPENCLIP}positional_embedding", what)[0])


def text_layout_from_diffusers(state: Mapping[str, torch.Tensor]) -> TextLayout:
    """The same layout read from a CLIPTextModel state dict (keys without "text_model.")."""
    what = "text encoder"
    vocab, hidden = shape_of(state, "embeddings.token_embedding.weight", what)
    return TextLayout(vocab, hidden, shape_of(state, "encoder.layers.0.mlp.fc1.weight", what)[0],
                      _count(state, "encoder.layers."), shape_of(state, "embeddings.position_embedding.weight", what)[0])


# ---------------------------------------------------------------- conversion


def _check(key: str, tensor: torch.Tensor, shape: Shape, what: str) -> None:
    if tuple(tensor.shape) != shape:
        raise LatentDiffError(f"{what}: {key} has shape {tuple(tensor.shape)}, expected {shape}")


def is_ignored(key: str) -> bool:
    """True for LDM tensors that belong to no component (DDPM schedule buffers, EMA copy, position_ids)."""
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def first_unmapped(state: Iterable[str], entries: Iterable[Entry]) -> str | None:
    """The first LDM key that no entry maps and no rule ignores, or None."""
    known = {e.ldm for e in entries}
    return next((k for k in state if k not in known and not is_ignored(k)), None)


def to_diffusers(state: Mapping[str, torch.Tensor], entries: list[Entry], what: str) -> dict[str, torch.Tensor]:
    """LDM tensors → diffusers tensors for one component; each present with its expected shape."""
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        if e.ldm not in state:
            if e.kind == "unused":
                continue
            raise LatentDiffError(f"{what}: missing key {e.ldm}")
        t = state[e.ldm]
        if e.checked and not (e.kind == "conv1x1" and tuple(t.shape) == e.shape):  # a 1x1 conv saved as Linear is fine
            _check(e.ldm, t, e.ldm_shape, what)
        if e.kind == "qkv":
            out.update(zip(e.diffusers, (piece.clone() for piece in t.chunk(3, dim=0))))  # clone: no shared storage
        elif e.kind == "transpose":
            out[e.diffusers[0]] = t.T.contiguous()  # (hidden, proj) → Linear weight (proj, hidden)
        elif e.kind != "unused":
            out[e.diffusers[0]] = t.reshape(e.shape)  # conv1x1: (C, C, 1, 1) → (C, C)
    return out


def _placeholder(e: Entry, like: torch.Tensor) -> torch.Tensor:
    """A value for a tensor SD does not use, so that CompVis/A1111 code finds every key it expects."""
    if e.ldm.endswith("text_projection"):
        return torch.eye(e.shape[0], dtype=like.dtype, device=like.device)
    if e.ldm.endswith("logit_scale"):
        return torch.full((), math.log(1 / 0.07), dtype=like.dtype, device=like.device)  # CLIP's initial temperature
    return torch.zeros(e.shape, dtype=like.dtype, device=like.device)  # an all-zero residual block is the identity


def to_ldm(state: Mapping[str, torch.Tensor], entries: list[Entry], what: str) -> dict[str, torch.Tensor]:
    """diffusers tensors → LDM tensors for one component (the inverse of to_diffusers); no key may be left over."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    like = next(iter(state.values()), torch.zeros(()))
    for e in entries:
        if e.kind == "unused":
            out[e.ldm] = _placeholder(e, like)
            continue
        for name in e.diffusers:
            if name not in state:
                raise LatentDiffError(f"{what}: missing key {name}")
            _check(name, state[name], e.shape, what)
        used.update(e.diffusers)
        parts = [state[name] for name in e.diffusers]
        if e.kind == "transpose":
            out[e.ldm] = parts[0].T.contiguous()
        else:
            out[e.ldm] = torch.cat(parts, dim=0) if e.kind == "qkv" else parts[0].reshape(e.ldm_shape)
    extra = next((k for k in state if k not in used), None)
    if extra is not None:
        raise LatentDiffError(f"{what}: unexpected key {extra}")
    return out
