"""Side-by-side benchmark of our pipeline against diffusers' StableDiffusionPipeline on the same random weights.

One process times every variant (U-Net CFG step, VAE decode, end-to-end image) after warm-up and keeps every
timing; peak memory is taken in a fresh subprocess per variant (CPU: RSS high-water mark, which a process
cannot reset) or in-process on CUDA (max_memory_allocated). Results are raw JSON; `make_table.py` turns
them into BENCHMARKS.md. Run it through `latentdiff bench` or `python benchmarks/bench_sd15.py`.

Part of the package (not benchmarks/) so that `latentdiff bench` works from an installed wheel. What is measured
(variants, settings) is variants.py; what runs in the fresh peak-memory process is probes.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from latentdiff.bench.variants import CPU_DEFAULT, CUDA_DEFAULT, VARIANTS, BenchSettings, Variant
from latentdiff.errors import LatentDiffError
from latentdiff.fileio import write_json

PROMPT, NEGATIVE = "a red fox in the snow, studio photograph", "blurry"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16")


# -- the model ---------------------------------------------------------------------------------------------------------
def build_components(layout: str, seed: int):
    """Random weights in the SD1.5 layout (latentdiff/checkpoints/presets/sd15.yaml), or a tiny SD1-like layout for smoke runs."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.checkpoints import Components
    from latentdiff.checkpoints.presets import read_preset
    from latentdiff.checkpoints.loader import load_tokenizer
    from latentdiff.models.unet import UNet, UNetConfig

    preset = read_preset("sd15")
    torch.manual_seed(seed)
    if layout == "sd15":
        unet_cfg = UNetConfig.from_diffusers(preset["unet"])
        vae_cfg = {k: v for k, v in preset["vae"].items() if not k.startswith("_")}
        text_cfg = dict(preset["text_encoder"])
    elif layout == "tiny":
        unet_cfg = UNetConfig(block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, True), num_heads=2,
                              cross_attention_dim=32, norm_num_groups=8, sample_size=8)
        vae_cfg = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
                       down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                       layers_per_block=1, norm_num_groups=8, sample_size=64)
        text_cfg = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    else:
        raise ValueError(f"unknown layout {layout!r} (sd15 or tiny)")
    unet = UNet(unet_cfg).eval()
    vae = AutoencoderKL(**vae_cfg).eval()
    text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_cfg.items() if k != "architectures"})).eval()
    scheduler = {k: v for k, v in preset["scheduler"].items() if not k.startswith("_")}
    return Components(unet, vae, text, load_tokenizer(None, "sd1"), scheduler, kind="sd1", source=f"random-{layout}")


def ensure_model(layout: str, seed: int, work_dir: str | os.PathLike) -> Path:
    """The random-weight diffusers folder for (layout, seed), built and saved once."""
    from latentdiff.checkpoints import save_diffusers_folder

    folder = Path(work_dir) / f"{layout}-seed{seed}"
    if not (folder / "model_index.json").is_file():
        log(f"building random {layout} weights in {folder}")
        save_diffusers_folder(build_components(layout, seed), folder)
    return folder


# -- where and with what ------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pick_device(name: str) -> torch.device:
    """cpu, cuda[:n] or auto; one-line error (not a CUDA assertion deep in a run) where the device is absent."""
    from latentdiff.runtime import parse_device

    try:
        return parse_device(name)
    except RuntimeError as e:  # torch.device("gpu") and the like
        raise LatentDiffError(f"unknown device {name!r} ({str(e).splitlines()[0]})") from None


def cpu_flags() -> dict[str, bool]:
    """Which vector/matrix extensions this CPU reports (from /proc/cpuinfo, and torch's own checks)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    out = {f: f in flags for f in CPU_FLAGS}
    for name, fn in (("torch_avx512_bf16", "_is_avx512_bf16_supported"), ("torch_amx_tile", "_is_amx_tile_supported")):
        out[name] = bool(getattr(torch.cpu, fn, lambda: False)())
    return out


def machine_info(device: torch.device) -> dict:
    """Device, CPU flags, versions and threads: what a reader needs to judge the numbers."""
    import diffusers
    import transformers

    cpu_name = ""
    with contextlib.suppress(OSError):
        cpu_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "")
    info = {"device": str(device), "cpu": cpu_name or platform.processor(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


# -- timing ---------------------------------------------------------------------------------------------------------------
def timed(fn, *, warmup: int, repeats: int, device: torch.device) -> dict:
    """Seconds per call of fn(): warm-up calls (kept apart), then repeats timed with CUDA events or perf_counter."""
    def once() -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    warm = [once() for _ in range(warmup)]
    times = [once() for _ in range(repeats)]
    return {"warmup_s": warm, "times_s": times, "median_s": statistics.median(times), "min_s": min(times)}


def autocast_ctx(variant: Variant, device: torch.device):
    if variant.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[variant.autocast])


# -- one variant ---------------------------------------------------------------------------------------------------------
class Runner:
    """A loaded pipeline (ours or diffusers') behind one interface: CFG U-Net step, VAE decode, whole image."""

    def __init__(self, variant: Variant, folder: Path, device: torch.device, s: BenchSettings):
        from latentdiff import fast as F
        from latentdiff.pipelines.samplers import make_scheduler

        self.v, self.device, self.s = variant, device, s
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[variant.dtype]
        if variant.fast and variant.dtype == "fp32":
            from latentdiff.runtime import default_dtype

            dtype = default_dtype(device)  # fast=True runs at the device's chosen precision
        self.dtype = dtype
        if variant.impl == "diffusers":
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype, safety_checker=None,
                                                           requires_safety_checker=False, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            # the folder's own scheduler file, as ours reads it (pipe.scheduler.config would add PNDM's defaults,
            # e.g. timestep_spacing="leading", and draw a different picture)
            pipe.scheduler = make_scheduler(s.sampler, json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
            pipe.to(device)
            if variant.attention == "xformers":
                pipe.enable_xformers_memory_efficient_attention()
            self.unet, self.vae = pipe.unet, pipe.vae
        else:
            from latentdiff.pipelines import LatentDiffusionPipeline

            pipe = LatentDiffusionPipeline.from_pretrained(folder, device=device, dtype=dtype, attention=variant.attention,
                                                           fast=variant.fast)
            self.unet, self.vae = pipe.unet, pipe.vae
            if variant.fused_qkv:
                F.fuse_qkv(self.unet)
        if variant.channels_last:
            F.channels_last(self.unet)
            F.channels_last(self.vae)
        if variant.compile:
            F.compile_module(self.unet, mode=None if variant.compile == "default" else variant.compile,
                             freezing=variant.freezing)  # always set: inductor's flag is process-wide
        self.pipe = pipe
        self.levers = list(getattr(pipe, "fast_levers", []))
        g = torch.Generator("cpu").manual_seed(s.seed)
        h = w = s.latent
        ctx_dim = self.unet.config.cross_attention_dim
        self.latents = torch.randn(1, 4, h, w, generator=g).to(device, dtype)  # (1, 4, h, w)
        self.context = torch.randn(2, 77, ctx_dim, generator=g).to(device, dtype)  # (2, 77, D): [uncond; cond]

    @torch.inference_mode()
    def unet_step(self) -> torch.Tensor:
        """One classifier-free-guidance step: the U-Net on the doubled batch, then the guidance combination."""
        x = torch.cat([self.latents, self.latents])  # (2, 4, h, w)
        t = torch.tensor(500, device=self.device)
        with autocast_ctx(self.v, self.device):
            if self.v.impl == "diffusers":
                out = self.unet(x, t, encoder_hidden_states=self.context).sample
            else:
                out = self.unet(x, t, self.context)
            uncond, cond = out.chunk(2)
            return uncond + self.s.guidance * (cond - uncond)

    @torch.inference_mode()
    def vae_decode(self) -> torch.Tensor:
        with autocast_ctx(self.v, self.device):
            return self.vae.decode(self.latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    @torch.inference_mode()
    def image(self, steps: int) -> np.ndarray:
        """One image at the settings' size and seed, as uint8 (H, W, 3)."""
        s = self.s
        with autocast_ctx(self.v, self.device):
            if self.v.impl == "diffusers":
                out = self.pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=s.guidance,
                                height=s.height, width=s.width, generator=torch.Generator("cpu").manual_seed(s.seed),
                                output_type="np").images[0]
                return (out * 255).round().astype(np.uint8)
            out = self.pipe(PROMPT, NEGATIVE, num_inference_steps=steps, guidance_scale=s.guidance, sampler=s.sampler,
                            seed=s.seed, height=s.height, width=s.width, progress=False).images[0]
            return np.asarray(out)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_variant(variant: Variant, folder: Path, device: torch.device, s: BenchSettings) -> tuple[dict, np.ndarray]:
    """Time one variant in this process: load, U-Net CFG step, VAE decode, end-to-end image."""
    row: dict = {"name": variant.name, **{k: v for k, v in asdict(variant).items() if k not in ("name", "devices")},
                 "precision": variant.precision, "reference": variant.reference}
    row["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # other jobs on the machine?
    t0 = time.perf_counter()
    r = Runner(variant, folder, device, s)
    row["load_s"] = time.perf_counter() - t0
    row["levers"], row["run_dtype"] = r.levers, str(r.dtype).replace("torch.", "")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        row["gpu_weights_mb"] = torch.cuda.memory_allocated(device) / 2**20
    log(f"{variant.name}: U-Net CFG step ×{s.step_warmup}+{s.step_repeats}")
    row["unet_step"] = timed(r.unet_step, warmup=s.step_warmup, repeats=s.step_repeats, device=device)
    log(f"{variant.name}: U-Net step median {row['unet_step']['median_s']:.3f} s; VAE decode ×1+{s.decode_repeats}")
    row["vae_decode"] = timed(r.vae_decode, warmup=1, repeats=s.decode_repeats, device=device)
    log(f"{variant.name}: end-to-end {s.width}×{s.height}, {s.steps} steps ×1 (1-step warm-up) +{s.e2e_repeats}")
    images: list[np.ndarray] = []
    r.image(1)  # warm-up at this size (allocator, compiled kernels, scheduler), excluded
    row["e2e"] = timed(lambda: images.append(r.image(s.steps)), warmup=0, repeats=s.e2e_repeats, device=device)
    row["e2e"]["steps"] = s.steps
    if device.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    image = images[-1]
    row["image_stats"] = {"mean": float(image.mean()), "std": float(image.std()),
                          "saturated_fraction": float(((image == 0) | (image == 255)).mean())}
    del r
    _free(device)
    return row, image


def image_diff(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and max absolute difference in 8-bit levels (/255)."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean_abs_255": float(d.mean()), "max_abs_255": int(d.max())}


# -- peak memory in a fresh process (the child side is probes.py) --------------------------------------------------
def run_probe(kind: str, args: dict) -> dict:
    """Spawn `python -m latentdiff.bench.probes --probe KIND ARGS OUT`: a process's RSS high-water mark cannot be reset in place."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, "-m", "latentdiff.bench.probes", "--probe", kind, json.dumps(args), out_path]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["probe failed"])[-1]}
        return json.loads(Path(out_path).read_text())
    finally:
        Path(out_path).unlink(missing_ok=True)


def measure_memory(variant: Variant, folder: Path, s: BenchSettings) -> dict:
    """Peak memory of one variant drawing a 2-step image, in a fresh process."""
    return run_probe("memory", {"variant": variant.name, "folder": str(folder), "settings": asdict(s)})


def measure_tiling(folder: Path, s: BenchSettings) -> list[dict]:
    """Untiled vs tiled VAE decodes at each of s.tiling_sizes: time, peak RSS, pixel difference."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in s.tiling_sizes:
            base = None
            for tile in (None, *[t for t in s.tiles if t < size]):
                log(f"VAE decode {size}² tile {tile or 'off'} in a fresh process")
                path = str(Path(tmp) / f"{size}-{tile}.npy")
                row = {"size": size, "tile": tile, **run_probe("tiling", {"folder": str(folder), "size": size, "tile": tile,
                                                                         "seed": s.seed, "device": s.device, "image_path": path})}
                if "error" not in row:
                    img = np.load(path)
                    base = img if tile is None else base
                    row["vs_untiled"] = image_diff(img, base) if base is not None else None
                rows.append(row)
    return rows


# -- paired A/B steps --------------------------------------------------------------------------------------------------------
def _alternate(fa, fb, rounds: int, device: torch.device, what: str) -> dict:
    """Time fa and fb in A B B A ... order after one warm-up call each; per-round ratios and their median."""
    fa(), fb()  # warm-up, excluded
    ta, tb = [], []
    for i in range(rounds):
        order = [(fa, ta), (fb, tb)] if i % 2 == 0 else [(fb, tb), (fa, ta)]
        for fn, times in order:
            times.extend(timed(fn, warmup=0, repeats=1, device=device)["times_s"])
        log(f"{what} round {i + 1}: {ta[-1]:.3f} s vs {tb[-1]:.3f} s")
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"a_times_s": ta, "b_times_s": tb, "a_median_s": statistics.median(ta), "b_median_s": statistics.median(tb),
            "ratios_a_over_b": ratios, "median_ratio": statistics.median(ratios)}


def measure_pair(a: Variant, b: Variant, folder: Path, device: torch.device, s: BenchSettings) -> dict:
    """Both variants loaded at once, U-Net CFG steps (and VAE decodes, where the VAE path differs) alternated."""
    ra, rb = Runner(a, folder, device, s), Runner(b, folder, device, s)
    out = {"a": a.name, "b": b.name, **_alternate(ra.unet_step, rb.unet_step, s.pair_rounds, device, f"{a.name}:{b.name} step")}
    with torch.inference_mode():
        out["max_abs_output_diff"] = (ra.unet_step().float() - rb.unet_step().float()).abs().max().item()
    vae_differs = (a.impl, a.dtype, a.autocast, a.channels_last) != (b.impl, b.dtype, b.autocast, b.channels_last)
    if vae_differs:
        out["vae_decode"] = _alternate(ra.vae_decode, rb.vae_decode, s.pair_rounds, device, f"{a.name}:{b.name} decode")
    del ra, rb
    _free(device)
    return out


# -- the run -------------------------------------------------------------------------------------------------------------
def run(s: BenchSettings, out: str | os.PathLike | None = None) -> dict:
    """Measure every variant of `s` on one random-weight model; write raw JSON to `out` (atomically) if given."""
    from latentdiff.fast import set_threads

    device = pick_device(s.device)
    set_threads(s.threads)
    names = list(s.variants or ([] if s.pairs else CUDA_DEFAULT if device.type == "cuda" else CPU_DEFAULT))
    for anchor in ("ours-fp32", "diffusers-fp32"):  # every picture is compared with these two
        if names and anchor not in names:
            names.insert(0, anchor)
    pairs = [tuple(p.split(":")) for p in s.pairs]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("pairs are written A:B (two variant names)")
    unknown = [n for n in names + [n for p in pairs for n in p] if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    names = [n for n in names if device.type in VARIANTS[n].devices]
    result = {"label": s.label, "started": dt.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(device), "settings": asdict(s), "variants": []}
    folder = Path(s.model) if s.model else ensure_model(s.layout, s.seed, s.work_dir)
    result["model"] = {"layout": "given folder" if s.model else s.layout, "folder": str(folder)}
    images: dict[str, np.ndarray] = {}
    for name in names:
        variant = VARIANTS[name]
        log(f"variant {name}")
        try:
            row, images[name] = measure_variant(variant, folder, device, s)
        except Exception as e:  # a lever that cannot run here is a result too; keep going
            row = {"name": name, "precision": variant.precision, "reference": variant.reference,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            log(f"{name} failed: {row['error']}")
            _free(device)
        if s.memory and "error" not in row:
            log(f"{name}: peak memory in a fresh process")
            row["memory"] = measure_memory(variant, folder, s)
        result["variants"].append(row)
        if out:
            write_json(out, result)  # keep what is measured so far
    for row in result["variants"]:
        if row["name"] in images:
            row["image_vs_ours_fp32"] = image_diff(images[row["name"]], images["ours-fp32"]) if "ours-fp32" in images else None
            row["image_vs_diffusers_fp32"] = (image_diff(images[row["name"]], images["diffusers-fp32"])
                                              if "diffusers-fp32" in images else None)
    for a, b in pairs:
        log(f"pair {a}:{b}, {s.pair_rounds} alternating rounds")
        result.setdefault("pairs", []).append(measure_pair(VARIANTS[a], VARIANTS[b], folder, device, s))
        if out:
            write_json(out, result)
    if s.tiling_sizes:
        result["vae_tiling"] = measure_tiling(folder, s)
    result["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if out:
        write_json(out, result)
    return result


def settings_from_args(a: argparse.Namespace) -> BenchSettings:
    return BenchSettings(layout=a.layout, model=a.model or "", device=a.device, variants=tuple(v for v in a.variants.split(",") if v), latent=a.latent,
                         height=a.size, width=a.size, steps=a.steps, sampler=a.sampler, step_warmup=a.step_warmup,
                         step_repeats=a.step_repeats, decode_repeats=a.decode_repeats, e2e_repeats=a.e2e_repeats,
                         memory=not a.no_memory, threads=a.threads,
                         tiling_sizes=tuple(int(x) for x in a.tiling_sizes.split(",") if x),
                         tiles=tuple(int(x) for x in a.tiles.split(",") if x),
                         pairs=tuple(x for x in a.pairs.split(",") if x), pair_rounds=a.pair_rounds, seed=a.seed, work_dir=a.work_dir, label=a.label)
