"""What `latentdiff bench` measures: the named variants (whose code, precision, levers) and the run's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_WORK_DIR = Path(os.environ.get("LATENTDIFF_BENCH_DIR", Path.home() / ".cache" / "latentdiff" / "bench"))


@dataclass(frozen=True)
class Variant:
    """One way of running a pipeline: whose code, which precision, which levers."""

    name: str
    impl: str                              # "diffusers" (the reference) | "ours"
    dtype: str = "fp32"                    # weights: fp32 | bf16 | fp16
    autocast: str | None = None            # bf16 | fp16: autocast over fp32 weights
    channels_last: bool = False            # NHWC conv weights and activations (latentdiff.fast.channels_last)
    fused_qkv: bool = False                # one GEMM for self-attention q, k, v (ours only)
    compile: str | None = None             # torch.compile mode: "default" | "max-autotune" | "reduce-overhead" (CUDA graphs)
    freezing: bool = False                 # inductor freezing (weights as constants; CPU oneDNN prepacking)
    fast: bool = False                     # ours with fast=True: the levers latentdiff.fast.PROVEN lists
    attention: str = "sdpa"                # sdpa | xformers | math (ours); diffusers uses SDPA, or xformers when asked
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def precision(self) -> str:
        """What the table compares across implementations: weights dtype or autocast dtype."""
        return f"{self.autocast}-autocast" if self.autocast else self.dtype

    @property
    def reference(self) -> str:
        """The diffusers variant this one is compared with (same precision, eager)."""
        return f"diffusers-{self.precision}"


def _v(name: str, **kw) -> Variant:
    return Variant(name=name, impl=name.split("-")[0], **kw)


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("diffusers-fp32"),
    _v("diffusers-bf16-autocast", autocast="bf16"),
    _v("diffusers-bf16", dtype="bf16"),
    _v("diffusers-fp16", dtype="fp16", devices=("cuda",)),
    _v("diffusers-fp32-cl", channels_last=True),
    _v("diffusers-fp16-cl-compile", dtype="fp16", channels_last=True, compile="max-autotune", devices=("cuda",)),
    _v("ours-fp32"),
    _v("ours-bf16-autocast", autocast="bf16"),
    _v("ours-bf16", dtype="bf16"),
    _v("ours-fp16", dtype="fp16", devices=("cuda",)),
    _v("ours-fp32-cl", channels_last=True),
    _v("ours-bf16-cl", dtype="bf16", channels_last=True),
    _v("ours-fp32-qkv", fused_qkv=True),
    _v("ours-fp32-cl-qkv", channels_last=True, fused_qkv=True),
    _v("ours-fp32-compile", compile="default"),
    _v("ours-fp32-cl-compile-freeze", channels_last=True, compile="default", freezing=True),
    _v("ours-fast"),  # fast=True at the device's default dtype
    _v("ours-fp16-cl", dtype="fp16", channels_last=True, devices=("cuda",)),
    _v("ours-fp16-cl-qkv", dtype="fp16", channels_last=True, fused_qkv=True, devices=("cuda",)),
    _v("ours-fp16-cl-compile", dtype="fp16", channels_last=True, compile="max-autotune", devices=("cuda",)),
    _v("ours-fp16-cl-cudagraph", dtype="fp16", channels_last=True, compile="reduce-overhead", devices=("cuda",)),
]}
VARIANTS["ours-fast"] = replace(VARIANTS["ours-fast"], fast=True)
CPU_DEFAULT = ("diffusers-fp32", "diffusers-bf16-autocast", "diffusers-bf16", "ours-fp32", "ours-bf16-autocast", "ours-bf16",
               "ours-fp32-cl", "ours-fp32-qkv", "ours-fast")
CUDA_DEFAULT = ("diffusers-fp32", "diffusers-fp16", "diffusers-fp16-cl-compile", "ours-fp32", "ours-fp16", "ours-fp16-cl",
                "ours-fp16-cl-qkv", "ours-fp16-cl-compile", "ours-fp16-cl-cudagraph", "ours-fast")


@dataclass
class BenchSettings:
    """What a benchmark run measures, and how."""

    layout: str = "sd15"                   # sd15: the real SD1.5 sizes | tiny: small channel counts (smoke runs, tests)
    model: str = ""                        # a diffusers folder to time instead of random weights (e.g. the embedded default)
    device: str = "auto"                   # cpu | cuda | auto
    variants: tuple[str, ...] = ()         # names in VARIANTS; () = the device's default list
    latent: int = 64                       # latent side of the U-Net CFG step and the VAE decode (64: 512² images)
    height: int = 512                      # end-to-end image size
    width: int = 512
    steps: int = 25                        # end-to-end sampler steps (reduce on CPU and say so)
    sampler: str = "dpmpp_2m"
    guidance: float = 7.5
    step_warmup: int = 1                   # untimed U-Net steps before timing
    step_repeats: int = 5                  # timed U-Net CFG steps (median reported)
    decode_repeats: int = 2                # timed VAE decodes of one latent
    e2e_repeats: int = 1                   # timed end-to-end images (after one untimed 1-step image)
    memory: bool = True                    # peak memory per variant (CPU: one subprocess each)
    tiling_sizes: tuple[int, ...] = ()     # VAE tiling probes: image sides to decode untiled and tiled (e.g. 1536)
    tiles: tuple[int, ...] = (1024, 512)   # tile sides tried at each of those sizes
    pairs: tuple[str, ...] = ()            # "A:B" variant pairs timed step by step in alternation (robust to load drift)
    pair_rounds: int = 4                   # alternations per pair (ABBA order), after one warm-up step each
    threads: int | None = None             # torch intra-op threads (None: torch's choice)
    seed: int = 0                          # weights, inputs and the image seed
    work_dir: str = str(DEFAULT_WORK_DIR)  # where the random-weight model folder is kept between runs
    label: str = ""                        # what this run is (e.g. "smoke run on a loaded machine, not a result")
