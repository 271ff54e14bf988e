"""CPU U-Net CFG step: ours in bf16 with each speed lever vs diffusers in bf16, same random SD1.5 weights, one process.

The arms alternate step by step (the order rotates every round) so load from other processes hits them alike; each
step records wall and CPU time. Levers that patch a loaded model in place (fused QKV, the attention backend) are
switched on one of our pipelines just for their arm; channels-last has a pipeline of its own. Then the image drift:
ours-fp32 vs ours-bf16 (and with channels-last) drawing the same image, in 8-bit levels.

    python benchmarks/cpu_step.py [--latent 64] [--rounds 3] [--arms A,B] [--threads 1] [--memory-size 512]
                                  [--out benchmarks/results/cpu_step.json]

Peak memory: each of diffusers-bf16, ours-bf16 and ours-bf16-cl draws a 2-step image in a fresh process (RSS
high-water mark, weights included).

Needs about 8 GB of memory at the SD1.5 size (three bf16 pipelines, then two fp32 + bf16 for the drift).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from latentdiff import fast
from latentdiff.bench.harness import Runner, ensure_model, machine_info, measure_memory
from latentdiff.bench.variants import DEFAULT_WORK_DIR, BenchSettings, Variant
from latentdiff.models.attention import set_attention_backend

ROOT = Path(__file__).resolve().parent.parent


def arms(runners: dict[str, Runner]) -> dict[str, tuple[Runner, callable, callable]]:
    """name → (runner, switch on, switch off) for the lever that arm measures."""
    nop = lambda: None  # noqa: E731
    ours, cl = runners["ours-bf16"], runners["ours-bf16-cl"]
    return {
        "diffusers-bf16": (runners["diffusers-bf16"], nop, nop),
        "ours-bf16": (ours, nop, nop),
        "ours-bf16-cl": (cl, nop, nop),
        "ours-bf16-cl-qkv": (cl, lambda: fast.fuse_qkv(cl.unet), lambda: fast.unfuse_qkv(cl.unet)),
        "ours-bf16-math-attention": (ours, lambda: set_attention_backend(ours.unet, "math"),
                                     lambda: set_attention_backend(ours.unet, "sdpa")),
    }


def step_once(runner: Runner, on, off) -> tuple[dict, torch.Tensor]:
    on()
    try:
        c, w = time.process_time(), time.perf_counter()
        out = runner.unet_step()
        return {"wall_s": round(time.perf_counter() - w, 3), "cpu_s": round(time.process_time() - c, 3)}, out
    finally:
        off()


def image(variant: Variant, folder: Path, s: BenchSettings) -> np.ndarray:
    r = Runner(variant, folder, torch.device("cpu"), s)
    try:
        return r.image(s.steps).astype(np.int16)
    finally:
        del r
        gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default="sd15")
    ap.add_argument("--latent", type=int, default=64, help="latent side of the step (64: a 512² image)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", default="", help="comma-separated subset of the arms (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1: CPU time barely depends on other load)")
    ap.add_argument("--drift-size", type=int, default=256, help="image side for the drift check (0: skip)")
    ap.add_argument("--drift-steps", type=int, default=8)
    ap.add_argument("--compile", action="store_true",
                    help="add ours-bf16-cl-compile: torch.compile (inductor, freezing) of the channels-last U-Net; its warm-up is the compile time")
    ap.add_argument("--memory-size", type=int, default=512,
                    help="image side for the peak-RSS probes: each arm draws a 2-step image in a fresh process (0: skip)")
    ap.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_step.json"))
    args = ap.parse_args()
    device = torch.device("cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = ensure_model(args.layout, 0, args.work_dir)
    s = BenchSettings(layout=args.layout, device="cpu", latent=args.latent, seed=0, guidance=7.5,
                      height=args.drift_size, width=args.drift_size, steps=args.drift_steps)
    started, load0 = time.strftime("%Y-%m-%dT%H:%M:%S"), os.getloadavg()
    variants = {"diffusers-bf16": Variant("diffusers-bf16", "diffusers", dtype="bf16"),
                "ours-bf16": Variant("ours-bf16", "ours", dtype="bf16"),
                "ours-bf16-cl": Variant("ours-bf16-cl", "ours", dtype="bf16", channels_last=True)}
    if args.compile:
        variants["ours-bf16-cl-compile"] = Variant("ours-bf16-cl-compile", "ours", dtype="bf16", channels_last=True,
                                                   compile="default", freezing=True)
    runners = {name: Runner(v, folder, device, s) for name, v in variants.items()}
    table = arms(runners)
    if args.compile:
        table["ours-bf16-cl-compile"] = (runners["ours-bf16-cl-compile"], lambda: None, lambda: None)
    if args.arms:
        table = {n: table[n] for n in args.arms.split(",")}
    steps: dict[str, list[dict]] = {name: [] for name in table}
    outputs: dict[str, torch.Tensor] = {}
    warmup: dict[str, dict] = {}
    for name, (r, on, off) in table.items():  # warm-up: oneDNN builds its bf16 primitives on the first call (compile: compiles)
        warmup[name], out = step_once(r, on, off)
        outputs[name] = out.float()
        print(f"warm-up {name}: {warmup[name]}", file=sys.stderr, flush=True)
    names = list(table)
    for k in range(args.rounds):
        order = names[k % len(names):] + names[:k % len(names)]
        for name in order:
            t, _ = step_once(*table[name])
            steps[name].append({**t, "load": round(os.getloadavg()[0], 2)})
            print(f"round {k + 1} {name}: {t}", file=sys.stderr, flush=True)
    ref = outputs.get("ours-bf16", outputs["diffusers-bf16"])
    med = {n: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")} for n, v in steps.items()}
    # per-round ratios against diffusers' step of the same round (robust to drift between rounds)
    per_round = {n: [round(a["wall_s"] / b["wall_s"], 3) for a, b in zip(v, steps["diffusers-bf16"])] for n, v in steps.items()}
    result = {
        "what": f"U-Net CFG step (batch 2, latent {args.latent}², guidance 7.5), random {args.layout} weights, bf16 weights",
        "started": started, "machine": machine_info(device), "load_average_start": [round(x, 2) for x in load0],
        "warmup": warmup, "steps": steps, "median": med,
        "ratio_vs_diffusers_bf16": {n: {"median_wall": round(med[n]["wall_s"] / med["diffusers-bf16"]["wall_s"], 3),
                                        "median_cpu": round(med[n]["cpu_s"] / med["diffusers-bf16"]["cpu_s"], 3),
                                        "median_of_round_ratios": statistics.median(per_round[n]),
                                        "per_round_wall": per_round[n]} for n in steps},
        "output_rel_diff_vs_ours_bf16": {n: float((o - ref).norm() / ref.norm()) for n, o in outputs.items()},
    }
    del runners, table
    gc.collect()
    if args.drift_size:
        want = image(Variant("ours-fp32", "ours"), folder, s)
        drift = {}
        for v in (Variant("ours-bf16", "ours", dtype="bf16"), Variant("ours-bf16-cl", "ours", dtype="bf16", channels_last=True)):
            d = np.abs(image(v, folder, s) - want)
            drift[v.name] = {"mean": round(float(d.mean()), 3), "max": int(d.max()), "over_2": round(float((d > 2).mean()), 4)}
        result["image_drift_vs_ours_fp32"] = {"size": args.drift_size, "steps": args.drift_steps, "sampler": s.sampler, **drift}
    if args.memory_size:  # fresh process per arm: a process's RSS high-water mark cannot be reset in place
        ms = replace(s, height=args.memory_size, width=args.memory_size)
        result["peak_rss"] = {"size": args.memory_size, "steps": 2, **{
            v.name: measure_memory(v, folder, ms) for v in variants.values() if not v.compile}}
        print(f"peak RSS: {result['peak_rss']}", file=sys.stderr, flush=True)
    result["finished"], result["load_average_end"] = time.strftime("%Y-%m-%dT%H:%M:%S"), [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| arm | median step wall (s) | × diffusers-bf16 | median of per-round ratios | median CPU (s) |\n|---|---:|---:|---:|---:|")
    for n in steps:
        r = result["ratio_vs_diffusers_bf16"][n]
        print(f"| {n} | {med[n]['wall_s']:.2f} | {r['median_wall']:.2f}× | {r['median_of_round_ratios']:.2f}× | {med[n]['cpu_s']:.2f} |")


if __name__ == "__main__":
    main()
