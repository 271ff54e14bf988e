"""Device and precision policy: fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp32 otherwise."""

from __future__ import annotations

import torch

from .errors import LatentDiffError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items() if len(name) == 4}  # torch dtype → fp32 | fp16 | bf16


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
    """`--device` value → torch device; one line for a name torch does not know or a GPU that is not there."""
    if name in (None, "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise LatentDiffError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise LatentDiffError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentDiffError("device cuda asked for, but no CUDA GPU is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LatentDiffError(f"device {name} asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
    return device


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: CUDA's free memory, else MemAvailable from /proc/meminfo (or sysconf)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown (Windows, macOS without sysconf): do not refuse


def check_fits(nbytes: float, what: str, device: torch.device | str = "cpu") -> None:
    """Refuse, before allocating, a job whose estimated peak `nbytes` exceeds the memory free on `device`."""
    device = torch.device(device)
    free = available_memory(device)
    if nbytes > free:
        raise LatentDiffError(f"{what} needs about {nbytes / 2**30:,.0f} GiB but {device.type} has "
                              f"{free / 2**30:,.1f} GiB free; use a smaller size or fewer images")


def configure_threads(threads: int | None) -> str | None:
    """Apply `--threads N` (None: torch's choice); return a one-line hint when the CPU is oversubscribed, else None.

    torch uses one thread per core; when other processes already keep the cores busy (1-minute load average ≥ the
    core count), its threads wait on each other and fewer run faster (benchmarks/BENCHMARKS.md, cold start).
    """
    import os

    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatentDiffError(f"--threads must be a positive whole number, got {threads}")
        torch.set_num_threads(threads)
        return None
    cores, n = os.cpu_count() or 1, torch.get_num_threads()
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on every platform
        return None
    if n > 1 and load >= cores:
        return f"note: the CPU is busy (load {load:.1f} on {cores} cores); --threads 1 may be faster than torch's {n}"
    return None
