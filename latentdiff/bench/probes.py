"""The child side of `latentdiff bench`'s peak-memory and VAE-tiling probes: harness.run_probe starts
`python -m latentdiff.bench.probes --probe KIND ARGS OUT` in a fresh process, because a process's RSS high-water mark
cannot be reset in place."""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentdiff.bench.harness import Runner, pick_device
from latentdiff.bench.variants import VARIANTS, BenchSettings


def rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this address space. Not ru_maxrss: the kernel
    carries it over fork and execve, so a child started by a 6 GB parent would report 6 GB before loading anything.
    """
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux/BSD


def probe_memory(variant_name: str, folder: str, settings: dict) -> dict:
    """Run in a fresh process: import, load the variant, draw one image with 2 steps; report RSS high-water marks."""
    s = BenchSettings(**settings)
    device = pick_device(s.device)
    variant = VARIANTS[variant_name]
    import diffusers  # noqa: F401  imports count towards the baseline, not the model
    import transformers  # noqa: F401

    from latentdiff import pipelines  # noqa: F401

    out = {"baseline_rss_mb": rss_mb()}
    r = Runner(variant, Path(folder), device, s)
    out["loaded_rss_mb"] = rss_mb()
    r.image(2)
    out["peak_rss_mb"] = rss_mb()
    if device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def probe_tiling(folder: str, size: int, tile: int | None, seed: int, device: str, image_path: str) -> dict:
    """Run in a fresh process: decode one random size×size latent with the SD VAE, tiled or not; time and RSS."""
    from diffusers import AutoencoderKL

    from latentdiff.fast import enable_vae_tiling

    dev = pick_device(device)
    out = {"baseline_rss_mb": rss_mb()}
    vae = AutoencoderKL.from_pretrained(str(Path(folder) / "vae"), local_files_only=True).eval().to(dev)
    if tile:
        enable_vae_tiling(vae, tile)
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(seed)).to(dev)  # (1, 4, h, w)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        t0 = time.perf_counter()
        img = vae.decode(z / vae.config.scaling_factor).sample  # (1, 3, H, W)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        out["decode_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = rss_mb()
    if dev.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    pixels = ((img[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    np.save(image_path, pixels)
    return out


def main(argv: list[str] | None = None) -> int:
    """A peak-memory child: `--probe memory|tiling ARGS_JSON OUT_JSON` (the command line is `latentdiff bench`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--probe"] or len(argv) != 4:
        raise SystemExit("usage: python -m latentdiff.bench.probes --probe memory|tiling ARGS_JSON OUT_JSON "
                         "(benchmarks: `latentdiff bench` or benchmarks/bench_sd15.py)")
    _, kind, args, out = argv
    args = json.loads(args)
    if kind == "memory":
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in args["settings"].items()}
        torch.set_num_threads(settings["threads"] or torch.get_num_threads())
        result = probe_memory(args["variant"], args["folder"], settings)
    else:
        result = probe_tiling(**args)
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
