"""U-Net variants: down/up-sampling operators and per-level attention kinds, each built by a small factory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentDiffError
from .attention import Attention

DOWNSAMPLERS = ("conv", "avgpool", "maxpool", "blurpool", "unshuffle")
UPSAMPLERS = ("nearest_conv", "bilinear_conv", "transposed", "shuffle")
ATTENTION_KINDS = ("none", "linear", "full")


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad H and W up to even sizes so a 2× operator yields ceil(H/2) × ceil(W/2), like SD's strided conv."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, w % 2, 0, h % 2)) if h % 2 or w % 2 else x


def _fit(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Crop an exactly-doubled map back to the skip's size (odd latent sides)."""
    return x if size is None else x[..., : size[0], : size[1]]


class Pool(nn.Module):
    """Parameter-free 2×2 average or max pooling (max pooling is the original U-Net's, Ronneberger et al. 2015)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d if self.kind == "avg" else F.max_pool2d
        return pool(_pad_even(x), 2)  # (B, C, ⌈H/2⌉, ⌈W/2⌉)


class BlurDownsample(nn.Module):
    """Anti-aliased strided conv: binomial [1,2,1]² low-pass, then SD's strided 3×3 conv (Zhang 2019, https://arxiv.org/abs/1904.11486).

    Zhang writes it conv(stride 1) → blur(stride 2); with no nonlinearity between them both are linear and shift-invariant,
    so blurring first and striding the conv is the same map (up to borders) at a quarter of the conv's cost.
    The filter is a non-persistent buffer: the state dict is that of SD's `Downsample`.
    """

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("blur", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone(), persistent=False)
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.blur.to(x.dtype), groups=x.shape[1])  # (B, C, H, W) low-passed
        return self.conv(x)  # (B, C, ⌈H/2⌉, ⌈W/2⌉)


class UnshuffleDownsample(nn.Module):
    """Space-to-depth then 1×1 conv (lucidrains' Downsample): no pixel is dropped, (B, C, H, W) → (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels * 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_unshuffle(_pad_even(x), 2))  # (B, 4C, H/2, W/2) → (B, C, H/2, W/2)


class InterpConvUpsample(nn.Module):
    """Bilinear ×2 (or to the skip's size), then a 3×3 conv: SD's `Upsample` with a smoother interpolation."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class TransposedUpsample(nn.Module):
    """2×2 stride-2 transposed convolution (the original U-Net's up-conv, Ronneberger et al. 2015, https://arxiv.org/abs/1505.04597)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 2, stride=2)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return _fit(self.conv(x), size)  # (B, C, 2H, 2W)


class ShuffleUpsample(nn.Module):
    """Sub-pixel conv: 3×3 conv to 4C at low resolution, then depth-to-space (Shi et al. 2016, https://arxiv.org/abs/1609.05158).

    ICNR init (Aitken et al. 2017, https://arxiv.org/abs/1707.02937): the four sub-pixels start with the same weights,
    so the layer begins as nearest-neighbour upsampling of a conv and shows no checkerboard.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1)
        with torch.no_grad():
            base = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv.weight.copy_(base.weight.repeat_interleave(4, dim=0))  # output channel c·4 + k ← base channel c
            self.conv.bias.copy_(base.bias.repeat_interleave(4))

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return _fit(F.pixel_shuffle(self.conv(x), 2), size)  # (B, 4C, H, W) → (B, C, 2H, 2W)


def make_downsampler(kind: str, channels: int) -> nn.Module:
    """The module that halves H and W at the end of a down level; 'conv' is SD's strided conv."""
    if kind == "conv":
        from .blocks import Downsample

        return Downsample(channels)
    if kind in ("avgpool", "maxpool"):
        return Pool(kind[:3])
    if kind == "blurpool":
        return BlurDownsample(channels)
    if kind == "unshuffle":
        return UnshuffleDownsample(channels)
    raise LatentDiffError(f"unknown downsample {kind!r}; choose one of {', '.join(DOWNSAMPLERS)}")


def make_upsampler(kind: str, channels: int) -> nn.Module:
    """The module that doubles H and W (or matches the next skip) at the end of an up level; 'nearest_conv' is SD's."""
    if kind == "nearest_conv":
        from .blocks import Upsample

        return Upsample(channels)
    if kind == "bilinear_conv":
        return InterpConvUpsample(channels)
    if kind == "transposed":
        return TransposedUpsample(channels)
    if kind == "shuffle":
        return ShuffleUpsample(channels)
    raise LatentDiffError(f"unknown upsample {kind!r}; choose one of {', '.join(UPSAMPLERS)}")


class LinearAttention(nn.Module):
    """Linear-cost self-attention with the φ(x) = elu(x) + 1 feature map (Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236).

    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j): O(N·d²) instead of O(N²·d) in the number of pixels N.
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.heads, self.eps = heads, eps
        self.to_qkv = nn.Linear(dim, heads * head_dim * 3, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).float()  # each (B, h, N, d)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = k.transpose(-1, -2) @ v  # (B, h, d, d)
        norm = q @ k.sum(dim=2, keepdim=True).transpose(-1, -2)  # (B, h, N, 1)
        out = (q @ kv) / (norm + self.eps)  # (B, h, N, d)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1).to(x.dtype))  # (B, N, dim)


class LinearAttentionBlock(nn.Module):
    """A level's attention at high resolution: linear self-attention, then softmax cross-attention to the text (O(N·T)).

    Takes and returns feature maps like `Transformer2D`, so a level can switch between the two.
    """

    def __init__(self, channels: int, *, heads: int, context_dim: int, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.attn1 = LinearAttention(channels, heads=heads, head_dim=channels // heads)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = Attention(channels, heads=heads, head_dim=channels // heads, context_dim=context_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C)
        normed = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        tokens = tokens + self.attn1(normed)  # residual pre-norm self-attention (lucidrains' Residual(PreNorm(...)))
        tokens = tokens + self.attn2(self.norm2(tokens), context)  # residual cross-attention to the text
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)


def make_attention(kind: str, channels: int, *, heads: int, context_dim: int, depth: int, groups: int,
                   linear_proj: bool) -> nn.Module | None:
    """The attention module after each ResNet of a level: None, linear, or SD's full `Transformer2D` (self + cross)."""
    if kind == "none":
        return None
    if kind == "full":
        from .blocks import Transformer2D

        return Transformer2D(channels, heads=heads, context_dim=context_dim, depth=depth, groups=groups, linear_proj=linear_proj)
    if kind == "linear":
        return LinearAttentionBlock(channels, heads=heads, context_dim=context_dim, groups=groups)
    raise LatentDiffError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")


def attention_kind(value: bool | str) -> str:
    """Normalise a level's attention setting: True → 'full', False → 'none', names checked."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if value not in ATTENTION_KINDS:
        raise LatentDiffError(f"unknown attention kind {value!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    return value
