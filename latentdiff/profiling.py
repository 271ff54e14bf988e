"""Profile denoiser architectures: parameters, counted FLOPs, latency and peak memory, as Markdown, JSON and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .charts import draw_chart
from .errors import LatentDiffError
from .fileio import atomic_write, read_yaml
from .runtime import check_fits
from .models.dit import DiT, DiTConfig
from .models.unet import UNet, UNetConfig

ArchConfig = UNetConfig | DiTConfig


@dataclass
class ProfileSettings:
    """What one profile run measures, and how."""

    batch: int = 1                  # samples per forward
    size: int | None = None         # latent side; None: each config's sample_size
    tokens: int = 77                # text tokens attended to
    warmup: int = 2                 # untimed forwards before timing
    repeats: int = 5                # timed forwards; the median is reported
    device: str = "cpu"             # cpu | cuda | auto (cuda when present); FLOPs are counted on the meta device either way
    dtype: str = "fp32"             # fp32 | bf16 | fp16 for the timed forwards
    latency: bool = True            # False: parameters and FLOPs only (no weights are materialised)
    seed: int = 0                   # weights and inputs


@dataclass
class ProfileRow:
    """One architecture's measurements for one input shape."""

    name: str
    arch: str                                   # "unet" | "dit"
    params: int
    flops: int                                  # per forward of the whole batch, 2 per multiply-add, counted
    batch: int
    latent: list[int]                           # [h, w]
    tokens: int
    description: str = ""
    device: str | None = None                   # where latency/memory were measured
    dtype: str | None = None
    latency_ms: float | None = None             # median over repeats
    latency_min_ms: float | None = None
    peak_activation_mb: float | None = None     # CPU: live tensors made during one forward (dispatch-level count)
    gpu_peak_mb: float | None = None            # CUDA: max_memory_allocated above the weights and inputs
    config: dict = field(default_factory=dict)


def load_arch_config(path: str | os.PathLike) -> tuple[str, ArchConfig, str]:
    """Read a YAML architecture: `unet:` (our keys, or a diffusers config with `_class_name`) or `dit:`; → (name, config, description)."""
    path = Path(path)
    doc = read_yaml(path, mapping=False)
    if not isinstance(doc, dict) or ("unet" in doc) == ("dit" in doc):
        raise LatentDiffError(f"{path} must have exactly one of the sections 'unet:' or 'dit:'")
    name, description = str(doc.get("name", path.stem)), str(doc.get("description", "")).strip()
    if "dit" in doc:
        return name, DiTConfig.from_dict(dict(doc["dit"] or {})), description
    section = dict(doc["unet"] or {})
    if "_class_name" in section:
        return name, UNetConfig.from_diffusers(section), description
    return name, UNetConfig.from_dict(section), description


def build_model(config: ArchConfig) -> nn.Module:
    """The denoiser a config describes: our `UNet` or `DiT` (an SDXL U-Net with its added conditioning supplied)."""
    if isinstance(config, DiTConfig):
        return DiT(config)
    return SDXLProfiled(UNet(config)) if config.addition_embed_type == "text_time" else UNet(config)


class SDXLProfiled(nn.Module):
    """An SDXL U-Net called as (x, t, context): pooled text and the six size numbers given as SDXL's 1024² defaults."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        c, b = self.unet.config, x.shape[0]
        n = 6 if c.projection_class_embeddings_input_dim > 6 * c.addition_time_embed_dim else 5  # refiner: 5 numbers
        pooled = c.projection_class_embeddings_input_dim - n * c.addition_time_embed_dim
        ids = torch.full((b, n), 1024.0, device=x.device, dtype=x.dtype)
        added = {"text_embeds": torch.zeros(b, pooled, device=x.device, dtype=x.dtype), "time_ids": ids}
        return self.unet(x, t, context, added_cond_kwargs=added)


def example_inputs(config: ArchConfig, batch: int, size: int, tokens: int, *, device="cpu", dtype=torch.float32,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy latents (B, C, s, s), timesteps (B,), text (B, T, D) as the model would see them."""
    kw = dict(device=device, dtype=dtype)
    if str(device) == "meta":
        return (torch.empty(batch, config.in_channels, size, size, **kw), torch.zeros(batch, device=device, dtype=torch.long),
                torch.empty(batch, tokens, config.cross_attention_dim, **kw))
    x = torch.randn(batch, config.in_channels, size, size, generator=generator).to(**kw)
    t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    ctx = torch.randn(batch, tokens, config.cross_attention_dim, generator=generator).to(**kw)
    return x, t, ctx


def count_flops(config: ArchConfig, batch: int = 1, size: int | None = None, tokens: int = 77) -> tuple[int, int]:
    """(FLOPs of one forward, parameters), counted by FlopCounterMode on the meta device.

    On the meta device SDPA decomposes into the two batched matmuls the counter sees; on CPU its fused kernel is missed.
    Matmuls and convolutions only (2 FLOPs per multiply-add); norms, activations, softmax and pooling are not counted.
    """
    size = size or config.sample_size
    with torch.device("meta"):
        model = build_model(config)
        inputs = example_inputs(config, batch, size, tokens, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops(), sum(p.numel() for p in model.parameters())


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages created by ops while active and still alive (allocator-independent; kernel scratch unseen)."""

    def __init__(self):
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.live: dict = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for ref in [r for r in self.live if r.expired()]:  # storages freed since the last op
            self.current -= self.live.pop(ref)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ref = self._ref(storage)
                if ref not in self.live:
                    self.live[ref] = storage.nbytes()
                    self.current += self.live[ref]
        self.peak = max(self.peak, self.current)
        return out


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LatentDiffError(f"device {name!r} asked for, but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise LatentDiffError(f"unsupported profiling device {name!r}; use cpu, cuda or auto")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory_mb(model: nn.Module, inputs: tuple) -> dict:
    """Peak memory of one forward: CUDA max_memory_allocated above what was allocated before, or on CPU the live-tensor peak."""
    dev = inputs[0].device
    with torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            model(*inputs)
            _sync(dev)
            return {"gpu_peak_mb": (torch.cuda.max_memory_allocated(dev) - base) / 2**20}
        with LiveTensorPeak() as tracker:
            model(*inputs)
        return {"peak_activation_mb": tracker.peak / 2**20}


def time_round_robin(jobs: list[tuple[nn.Module, tuple]], *, warmup: int, repeats: int, progress: bool = False) -> list[list[float]]:
    """Forward latencies in ms, one list per job, timed in turns (job 1, job 2, ..., job 1, ...) after each one's warm-up.

    Taking turns spreads a shared machine's changing load over all jobs alike, instead of favouring whichever ran when
    the machine was quiet; report the median.
    """
    from tqdm import tqdm

    times: list[list[float]] = [[] for _ in jobs]
    with torch.inference_mode():
        for model, inputs in jobs:
            for _ in range(warmup):
                model(*inputs)
            _sync(inputs[0].device)
        for _ in tqdm(range(repeats), desc="time", unit="round", disable=not progress):
            for i, (model, inputs) in enumerate(jobs):
                t0 = time.perf_counter()
                model(*inputs)
                _sync(inputs[0].device)
                times[i].append((time.perf_counter() - t0) * 1000)
    return times


def profile_many(specs: list[tuple[str, ArchConfig, str]], settings: ProfileSettings, progress: bool = False) -> list[ProfileRow]:
    """Count every (name, config, description); then, unless settings.latency is off, time them in turns and measure memory."""
    s = settings
    if s.batch < 1 or s.tokens < 1 or s.repeats < 1 or s.warmup < 0:
        raise LatentDiffError("batch, tokens and repeats must be positive and warmup non-negative")
    if s.dtype not in _DTYPES:
        raise LatentDiffError(f"unknown dtype {s.dtype!r}; choose one of {', '.join(_DTYPES)}")
    from tqdm import tqdm

    if s.size is not None and s.size < 1:
        raise LatentDiffError(f"--size must be positive, got {s.size}")
    if s.latency:  # refuse sizes that cannot fit before anything is built
        dev, dtype = _device(s.device), _DTYPES[s.dtype]
        for name, config, _ in specs:
            size = s.size or config.sample_size
            check_fits(activation_bytes(config, s.batch, size, dtype.itemsize), f"{name}: latent {size}x{size}", dev)
    rows = []
    for name, config, description in tqdm(specs, desc="count", unit="config", disable=not progress):
        size = s.size or config.sample_size
        try:
            flops, params = count_flops(config, s.batch, size, s.tokens)
        except RuntimeError as e:  # meta tensors too large to describe (attention over billions of tokens)
            raise LatentDiffError(f"{name}: latent {size}x{size} is too large to count ({str(e).splitlines()[0]})") from None
        rows.append(ProfileRow(name=name, arch="dit" if isinstance(config, DiTConfig) else "unet", params=params, flops=flops,
                               batch=s.batch, latent=[size, size], tokens=s.tokens, description=description,
                               config=config.to_dict()))
    if not s.latency:
        return rows
    dev, dtype = _device(s.device), _DTYPES[s.dtype]
    jobs = []
    for (name, config, _), row in zip(specs, rows):
        torch.manual_seed(s.seed)
        model = build_model(config).eval().to(dev, dtype)
        gen = torch.Generator().manual_seed(s.seed)
        jobs.append((model, example_inputs(config, s.batch, row.latent[0], s.tokens, device=dev, dtype=dtype, generator=gen)))
    times = time_round_robin(jobs, warmup=s.warmup, repeats=s.repeats, progress=progress)
    for row, (model, inputs), t in tqdm(list(zip(rows, jobs, times)), desc="memory", unit="config", disable=not progress):
        row.latency_ms, row.latency_min_ms = statistics.median(t), min(t)
        row.device, row.dtype = str(dev), s.dtype
        for key, value in peak_memory_mb(model, inputs).items():
            setattr(row, key, value)
    return rows


def activation_bytes(config: ArchConfig, batch: int, size: int, dtype_bytes: int = 4) -> float:
    """Rough peak activation bytes of one forward: ~8 top-level feature maps (skips included), weights not counted."""
    if isinstance(config, DiTConfig):
        width = config.hidden_size * config.mlp_ratio / config.patch_size**2  # per latent pixel, MLP hidden
    else:
        width = config.block_out_channels[0]
    return batch * size * size * width * dtype_bytes * 8


def profile_one(name: str, config: ArchConfig, settings: ProfileSettings, description: str = "") -> ProfileRow:
    """Count, then (unless settings.latency is off) time and measure one architecture."""
    return profile_many([(name, config, description)], settings)[0]


def machine_info() -> dict:
    """Where the numbers were taken."""
    info = {"platform": platform.platform(), "processor": _cpu_name(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": None,
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}  # >cores: shared machine, noisy
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def to_markdown(rows: list[ProfileRow]) -> str:
    """One table for all rows: what each column means is in the header."""
    gpu = any(r.gpu_peak_mb is not None for r in rows)
    head = ["config", "arch", "params (M)", "GFLOP/fwd", "latent", "batch", "latency ms (median)", "min ms"]
    head += ["GPU peak MiB" if gpu else "peak act. MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, r.arch, f"{r.params / 1e6:.2f}", f"{r.flops / 1e9:.3f}", "×".join(map(str, r.latent)), str(r.batch),
                 _fmt(r.latency_ms, ".1f"), _fmt(r.latency_min_ms, ".1f")]
        cells += [_fmt(r.gpu_peak_mb if gpu else r.peak_activation_mb, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file via a temp file and os.replace: never half-written."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(rows: list[ProfileRow], settings: ProfileSettings, path: str | os.PathLike) -> Path:
    """Raw results with the settings and machine they came from."""
    doc = {"settings": asdict(settings), "machine": machine_info(), "rows": [asdict(r) for r in rows]}
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


def latency_chart(rows: list[ProfileRow], path: str | os.PathLike) -> Path:
    """Latency (median ms) against counted GFLOPs, one labelled point per config."""
    timed = [r for r in rows if r.latency_ms is not None]
    if not timed:
        raise LatentDiffError("no latencies to chart (profile was run without timing)")
    series = [{"label": r.name, "x": [r.flops / 1e9], "y": [r.latency_ms], "points": True} for r in timed]
    spread = lambda v: max(v) / max(min(v), 1e-12) > 30  # noqa: E731
    dev = f"{timed[0].device}, {timed[0].dtype}, batch {timed[0].batch}"
    return draw_chart(series, path, title=f"latency vs FLOPs ({dev})", xlabel="GFLOP per forward", ylabel="latency, ms (median)",
                      log_x=spread([r.flops / 1e9 for r in timed]), log_y=spread([r.latency_ms for r in timed]))
