"""A DiT-style transformer denoiser (Peebles & Xie 2022, https://arxiv.org/abs/2212.09748) with the U-Net's call signature."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import LatentDiffError
from .attention import Attention
from .blocks import TimestepEmbedding, timestep_embedding


@dataclass
class DiTConfig:
    """Architecture of the DiT backbone; defaults are DiT-S/2 widths with cross-attention to CLIP ViT-L text."""

    in_channels: int = 4                    # latent channels in
    out_channels: int = 4                   # predicted noise / v channels
    patch_size: int = 2                     # p: each token is a p×p latent patch
    hidden_size: int = 384                  # token width D
    depth: int = 12                         # number of DiT blocks
    num_heads: int = 6                      # attention heads (self and cross)
    mlp_ratio: float = 4.0                  # MLP hidden width = mlp_ratio·D
    cross_attention_dim: int = 768          # text embedding width
    freq_dim: int = 256                     # sinusoidal timestep features before the MLP
    sample_size: int = 32                   # latent side the model is meant for (any multiple of p runs)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise LatentDiffError(f"DiT hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.hidden_size % 4:
            raise LatentDiffError(f"DiT hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos positions)")
        if self.patch_size < 1 or self.depth < 1:
            raise LatentDiffError("DiT patch_size and depth must be positive")

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        """Build from our own keys, failing with one line on an unknown key."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise LatentDiffError(f"unknown DiT config key {key!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions as in DiT/MAE: half the channels encode the row, half the column. → (gh·gw, dim)"""
    quarter = dim // 4
    f64 = dict(dtype=torch.float64, device="cpu")
    omega = 1.0 / 10000 ** (torch.arange(quarter, **f64) / quarter)  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(gh, **f64), torch.arange(gw, **f64), indexing="ij")

    def enc(pos: torch.Tensor) -> torch.Tensor:
        args = pos.reshape(-1, 1) * omega[None]  # (N, D/4)
        return torch.cat([args.sin(), args.cos()], dim=1)  # (N, D/2)

    return torch.cat([enc(cols), enc(rows)], dim=1).float()  # (N, D)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, with (B, 1, D) shift/scale broadcast over tokens."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block with cross-attention to the text between self-attention and MLP (as in PixArt-α)."""

    def __init__(self, dim: int, *, heads: int, context_dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(dim, heads=heads, head_dim=dim // heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn2 = Attention(dim, heads=heads, head_dim=dim // heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)  # each (B, 1, D)
        x = x + gate1 * self.attn1(modulate(self.norm1(x), shift1, scale1))
        x = x + self.attn2(self.norm2(x), context)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map from each token to its p·p·C_out patch values."""

    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p·p·C_out)


class DiT(nn.Module):
    """Transformer ε/v-predictor: (noisy latents, timestep, text embeddings) → (B, out_channels, h, w), like our `UNet`."""

    gradient_checkpointing = False

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        d = c.hidden_size
        self.x_embedder = nn.Conv2d(c.in_channels, d, c.patch_size, stride=c.patch_size)  # patchify
        self.t_embedder = TimestepEmbedding(c.freq_dim, d)
        self.blocks = nn.ModuleList(
            DiTBlock(d, heads=c.num_heads, context_dim=c.cross_attention_dim, mlp_ratio=c.mlp_ratio) for _ in range(c.depth)
        )
        self.final_layer = FinalLayer(d, c.patch_size, c.out_channels)
        self._pos: dict[tuple[int, int], torch.Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT's init: Xavier-uniform linears, patchify like a linear layer, adaLN-Zero and output projections at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for lin in (self.t_embedder.linear_1, self.t_embedder.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.attn2.to_out[0].weight)  # the ungated cross-attention too (as PixArt-α)
            nn.init.zeros_(block.attn2.to_out[0].bias)
        for p in (*self.final_layer.adaLN_modulation[-1].parameters(), *self.final_layer.linear.parameters()):
            nn.init.zeros_(p)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.weight.device

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory (training only)."""
        self.gradient_checkpointing = on

    def _positions(self, gh: int, gw: int, like: torch.Tensor) -> torch.Tensor:
        key = (gh, gw)
        if key not in self._pos:
            self._pos[key] = sincos_2d(self.config.hidden_size, gh, gw)
        return self._pos[key].to(device=like.device, dtype=like.dtype)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """sample (B, C_in, h, w) with h, w multiples of the patch size, timestep scalar or (B,), text (B, T, D_txt) → (B, C_out, h, w)."""
        c, p = self.config, self.config.patch_size
        b, _, h, w = sample.shape
        if h % p or w % p:
            raise LatentDiffError(f"DiT with patch size {p} needs latent sides divisible by {p}, got {h}×{w}")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1).expand(b) if t.ndim == 0 else t.expand(b)
        cond = self.t_embedder(timestep_embedding(t, c.freq_dim).to(sample.dtype))  # (B, D)

        gh, gw = h // p, w // p
        x = self.x_embedder(sample).flatten(2).transpose(1, 2)  # (B, N = gh·gw, D)
        x = x + self._positions(gh, gw, x)[None]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cond, encoder_hidden_states, use_reentrant=False)
            else:
                x = block(x, cond, encoder_hidden_states)
        x = self.final_layer(x, cond)  # (B, N, p·p·C_out)
        x = x.view(b, gh, gw, p, p, c.out_channels).permute(0, 5, 1, 3, 2, 4)  # (B, C_out, gh, p, gw, p)
        return x.reshape(b, c.out_channels, h, w)


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen parameters together."""
    return sum(p.numel() for p in model.parameters())


def dit_matching(n_params: int, *, depth: int, num_heads: int, head_multiple: int = 8, **kwargs) -> DiTConfig:
    """The DiT of the given depth whose width (a multiple of num_heads·head_multiple) gives the closest parameter count."""
    step = num_heads * head_multiple
    step = step * 4 // math.gcd(step, 4)  # also a multiple of 4 for the sin-cos positions
    best, best_gap = None, None
    for width in range(step, 64 * step + 1, step):
        cfg = DiTConfig(hidden_size=width, depth=depth, num_heads=num_heads, **kwargs)
        with torch.device("meta"):
            n = count_parameters(DiT(cfg))
        gap = abs(n - n_params)
        if best_gap is not None and gap > best_gap:
            break  # parameters grow with width: past the closest one
        best, best_gap = cfg, gap
    return best
