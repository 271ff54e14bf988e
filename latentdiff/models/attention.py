"""Multi-head attention with switchable kernels: PyTorch SDPA, xformers, or a plain math reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentDiffError

BACKENDS = ("sdpa", "xformers", "math")


def _xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return True


def check_backend(name: str) -> str:
    """Validate an attention backend name, failing with one line if it cannot run here."""
    if name not in BACKENDS:
        raise LatentDiffError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "xformers" and not _xformers_available():
        raise LatentDiffError("attention backend 'xformers' asked for, but xformers is not installed (pip install xformers, CUDA only)")
    return name


def scaled_dot_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q kᵀ / √d) v over (B, heads, N, d) tensors with the chosen kernel."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "xformers":
        import xformers.ops as xops

        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, N, h, d)
        return out.transpose(1, 2)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, h, Nq, Nk)
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    """Self- or cross-attention; parameter names match diffusers' `Attention` (to_q, to_k, to_v, to_out.0)."""

    def __init__(self, query_dim: int, *, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.backend = "sdpa"
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, N, h·d), (B, M, h·d)
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
        out = scaled_dot_product(q, k, v, self.backend)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, N, h·d)
        return self.to_out[1](self.to_out[0](out))


def set_attention_backend(model: nn.Module, name: str) -> None:
    """Switch every `Attention` in `model` to the named kernel."""
    check_backend(name)
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = name
