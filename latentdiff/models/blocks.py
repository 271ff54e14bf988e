"""U-Net building blocks; module and parameter names follow diffusers' UNet2DConditionModel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .variants import attention_kind, make_attention, make_downsampler, make_upsampler


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal timestep features (Vaswani et al. 2017), laid out as diffusers' `Timesteps`: (B,) → (B, dim)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t[:, None].float() * exponent.exp()[None, :]  # (B, half)
    emb = torch.cat([args.sin(), args.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal features: dim → 4·dim → 4·dim."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv residual block with the timestep embedding added between its two convs."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, *, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, https://arxiv.org/abs/2002.05202)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: GEGLU to 4·dim and back (names net.0.proj, net.2 as in diffusers)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, and feed-forward, each residual."""

    def __init__(self, dim: int, *, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads=heads, head_dim=head_dim, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """Spatial transformer: feature map → tokens → transformer blocks → feature map, plus a residual."""

    def __init__(self, channels: int, *, heads: int, context_dim: int, depth: int = 1, groups: int = 32, linear_proj: bool = False):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels) if linear_proj else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads=heads, head_dim=channels // heads, context_dim=context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels) if linear_proj else nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear_proj:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C)
        if self.linear_proj:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear_proj:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear_proj:
            x = self.proj_out(x)
        return x + residual


class Downsample(nn.Module):
    """Strided 3×3 convolution halving H and W (SD's choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 (or to the skip's size) followed by a 3×3 convolution (SD's choice)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class _Checkpointed(nn.Module):
    """Mixin: run a sub-module under activation checkpointing when training with it switched on."""

    gradient_checkpointing = False

    def _run(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


def attention_list(attention: bool | str, channels: int, layers: int, **kw) -> nn.ModuleList | None:
    """One attention module per ResNet of a level (True/"full": SD's Transformer2D; "linear"), or None for "none"."""
    kind = attention_kind(attention)
    return nn.ModuleList(make_attention(kind, channels, **kw) for _ in range(layers)) if kind != "none" else None


class DownBlock(_Checkpointed):
    """One encoder level: ResNet blocks (each optionally followed by a transformer), then an optional downsample."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, *, layers: int, attention: bool | str, heads: int,
                 context_dim: int, depth: int, groups: int, eps: float, linear_proj: bool, downsample: bool,
                 down_kind: str = "conv"):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_dim, groups=groups, eps=eps) for i in range(layers)
        )
        self.attentions = attention_list(attention, out_ch, layers, heads=heads, context_dim=context_dim, depth=depth,
                                         groups=groups, linear_proj=linear_proj)
        self.downsamplers = nn.ModuleList([make_downsampler(down_kind, out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = self._run(resnet, x, temb)
            if self.attentions is not None:
                x = self._run(self.attentions[i], x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Checkpointed):
    """Bottleneck: ResNet, transformer, ResNet."""

    def __init__(self, ch: int, temb_dim: int, *, heads: int, context_dim: int, depth: int, groups: int, eps: float, linear_proj: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(ch, ch, temb_dim, groups=groups, eps=eps) for _ in range(2))
        self.attentions = nn.ModuleList(
            [Transformer2D(ch, heads=heads, context_dim=context_dim, depth=depth, groups=groups, linear_proj=linear_proj)]
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self._run(self.resnets[0], x, temb)
        x = self._run(self.attentions[0], x, context)
        return self._run(self.resnets[1], x, temb)


class UpBlock(_Checkpointed):
    """One decoder level: each ResNet block takes the concatenated skip; then an optional upsample."""

    def __init__(self, in_ch: int, prev_ch: int, out_ch: int, temb_dim: int, *, layers: int, attention: bool | str, heads: int,
                 context_dim: int, depth: int, groups: int, eps: float, linear_proj: bool, upsample: bool,
                 up_kind: str = "nearest_conv", skip: bool = True):
        super().__init__()
        self.skip = skip  # False: the skip-connection ablation, ResNets see only the decoder path
        self.resnets = nn.ModuleList()
        for i in range(layers):
            skip_ch = (in_ch if i == layers - 1 else out_ch) if skip else 0
            res_in = prev_ch if i == 0 else out_ch
            self.resnets.append(ResnetBlock2D(res_in + skip_ch, out_ch, temb_dim, groups=groups, eps=eps))
        self.attentions = attention_list(attention, out_ch, layers, heads=heads, context_dim=context_dim, depth=depth,
                                         groups=groups, linear_proj=linear_proj)
        self.upsamplers = nn.ModuleList([make_upsampler(up_kind, out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, context: torch.Tensor,
                upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            if self.skip:
                x = torch.cat([x, skips.pop()], dim=1)  # (B, C + C_skip, H, W)
            x = self._run(resnet, x, temb)
            if self.attentions is not None:
                x = self._run(self.attentions[i], x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x
