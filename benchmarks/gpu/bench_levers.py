"""One speed lever of ours on its own (fused QKV, torch.compile, CUDA graphs), timed by the harness like `latentdiff bench`.

The harness's named variants stack levers on channels-last; the lease measures each alone, one process per lever so a
compile that runs past its timeout loses only its own row. The JSON has the harness's shape ("variants" rows with
unet_step, vae_decode, e2e, gpu_peak_mb, compile time in the warm-up steps) and compares with the `bench` run's
diffusers-fp16 row from the same machine.

    python benchmarks/gpu/bench_levers.py LEVER --device cuda --out X.json [--layout sd15] [--steps 10]
    LEVER: qkv | compile | cudagraph      (DRY: --device cpu --layout tiny; compile levers are refused on the CPU)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

import torch

from latentdiff.bench.harness import ensure_model, machine_info, measure_variant
from latentdiff.bench.variants import DEFAULT_WORK_DIR, BenchSettings, Variant
from latentdiff.fileio import write_json

LEVERS = {"qkv": dict(fused_qkv=True), "compile": dict(compile="default"), "cudagraph": dict(compile="reduce-overhead")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lever", choices=list(LEVERS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layout", default="sd15")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu" and a.lever != "qkv":
        print(f"{a.lever}: not run on the CPU (torch.compile is a lease-only measurement)")
        return 0
    dtype = "fp16" if device.type == "cuda" else "fp32"
    variant = Variant(f"ours-{dtype}-{a.lever}", "ours", dtype=dtype, **LEVERS[a.lever])
    cuda = device.type == "cuda"
    s = BenchSettings(layout=a.layout, device=a.device, variants=(variant.name,), latent=a.size // 8, height=a.size,
                      width=a.size, steps=a.steps, step_warmup=3 if cuda else 1, step_repeats=8 if cuda else 1,
                      decode_repeats=1, e2e_repeats=1, memory=False, work_dir=a.work_dir,
                      label=f"one lever alone: {a.lever}; the reference is the bench run's diffusers-{dtype} row")
    result = {"label": s.label, "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(device),
              "settings": {k: getattr(s, k) for k in ("layout", "latent", "height", "width", "steps", "sampler", "guidance",
                                                      "step_warmup", "step_repeats")}, "variants": []}
    folder = ensure_model(a.layout, 0, a.work_dir)
    try:
        row, _ = measure_variant(variant, folder, device, s)
        row["compile_and_first_steps_s"] = sum(row["unet_step"]["warmup_s"])  # compile (and graph capture) lands here
    except Exception as e:  # a lever that cannot run here is a result too
        row = {"name": variant.name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    result["variants"].append(row)
    result["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    write_json(a.out, result)
    step = row.get("unet_step", {}).get("median_s")
    print(f"{variant.name}: " + (f"U-Net CFG step {step:.4f} s, {1 / step:.1f} it/s" if step else row.get("error", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
