"""Device and precision policy: fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp32 otherwise."""

from __future__ import annotations

import torch

from .errors import LatentDiffError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16() -> bool:
    """True where bf16 matmuls run in hardware; elsewhere bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def default_dtype(device: torch.device) -> torch.dtype:
    """The fast precision for this device: fp16 on CUDA, bf16 on bf16-native CPUs, else fp32."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def parse_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`--dtype` value → torch dtype; None or "auto" picks the device default."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return default_dtype(device)
    if name not in DTYPES:
        raise LatentDiffError(f"unknown dtype {name!r}; choose one of auto, fp32, fp16, bf16")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise LatentDiffError("fp16 is not supported on CPU; use bf16 or fp32")
    return dtype


def parse_device(name: str | torch.device | None) -> torch.device:
    if name in (None, "auto"):
        return default_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentDiffError("device cuda asked for, but no CUDA GPU is available")
    return device
