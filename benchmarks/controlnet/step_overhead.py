"""What a ControlNet costs per sampler step: one CFG step (U-Net on the doubled batch) with 0, 1 and 2 ControlNets.

Random weights in the SD1.5 layout (`--size sd15`, 64×64 latents: for a GPU lease) or a reduced one (`--size small`,
default: a CPU run of about a minute). Each arm is timed after warm-up, rounds interleaved; the ratio to the plain step
is the overhead. Run: `python benchmarks/controlnet/step_overhead.py [--size sd15 --device cuda --dtype fp16]`;
writes step_overhead-<size>-<device>.json beside itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latentdiff.models.controlnet import ControlNet, ControlNetConfig
from latentdiff.models.unet import UNet, UNetConfig
from latentdiff.pipelines.control import ControlledUNet, ControlUnit, PreparedUnit

HERE = Path(__file__).resolve().parent
SIZES = {"sd15": (UNetConfig(), 64), "small": (UNetConfig(block_out_channels=(64, 128, 256), layers_per_block=1, num_heads=4,
                                                            attention_levels=(False, True, True), cross_attention_dim=256,
                                                            norm_num_groups=16), 16)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the 2-core development machines)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cfg, side = SIZES[args.size]
    torch.manual_seed(0)
    unet = UNet(cfg).eval().to(device, dtype)
    nets = [ControlNet(ControlNetConfig.for_unet(cfg)).eval().to(device, dtype) for _ in range(2)]
    x = torch.randn(2, 4, side, side, device=device, dtype=dtype)  # CFG: [uncond; cond] of one image
    ctx = torch.randn(2, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    cond = torch.rand(1, 3, side * 8, side * 8, device=device, dtype=dtype)
    arms = {f"{n} ControlNet{'s' * (n != 1)}": ControlledUNet(unet, [PreparedUnit(ControlUnit(net, None), net, cond, "", "", "")
                                                                       for net in nets[:n]], 10**9, True) for n in (0, 1, 2)}
    times = {k: [] for k in arms}
    with torch.no_grad():
        for arm in arms.values():  # warm-up
            arm(x, 500, ctx)
        for r in range(args.rounds):
            for k in (list(arms) if r % 2 else list(arms)[::-1]):
                for _ in range(args.reps):
                    sync(device)
                    t0 = time.perf_counter()
                    arms[k](x, 500, ctx)
                    sync(device)
                    times[k].append(time.perf_counter() - t0)
    ms = {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()}
    base = ms["0 ControlNets"]
    result = {"what": "one CFG step (batch 2) with 0, 1, 2 ControlNets; median ms and ratio to the plain step",
              "size": args.size, "latent": [side, side], "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "rounds": args.rounds, "reps": args.reps, "median_ms": ms, "ratio": {k: round(v / base, 3) for k, v in ms.items()}}
    (HERE / f"step_overhead-{args.size}-{device.type}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
