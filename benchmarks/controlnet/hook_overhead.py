"""Does the U-Net's ControlNet hook cost anything when no ControlNet is attached? An A/A-vs-A/B timing.

Arm B is the U-Net forward before the hook, read from git (`--before`, default the commit before the hook) and
loaded beside the current module; arm A is today's forward. Both get the same weights and inputs, rounds are
interleaved, and the A/A ratio (today's forward against itself) is the noise floor the A/B ratio is read against.
Run: `python benchmarks/controlnet/hook_overhead.py` (CPU, under a minute); writes hook_overhead.json beside itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import latentdiff.models.unet as current
from latentdiff.bench.harness import timed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def module_at(commit: str):
    """latentdiff/models/unet.py as it was at `commit`, imported as latentdiff.models.unet_before."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:latentdiff/models/unet.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("latentdiff.models.unet_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "latentdiff.models"
    sys.modules[spec.name] = mod
    exec(compile(source, f"{commit}:unet.py", "exec"), mod.__dict__)
    return mod


def time_calls(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` calls (latentdiff.bench's timer, on the CPU)."""
    return timed(fn, warmup=0, repeats=reps, device=torch.device("cpu"))["times_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="792510d", help="commit whose U-Net forward has no hook")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    before = module_at(args.before)
    cfg = current.UNetConfig(block_out_channels=(64, 128, 256), layers_per_block=1, attention_levels=(False, True, True),
                             num_heads=4, cross_attention_dim=256, norm_num_groups=16)
    arms = {"A": current.UNet(cfg).eval(), "A2": current.UNet(cfg).eval(),
            "B": before.UNet(before.UNetConfig(**{k: v for k, v in cfg.to_dict().items()  # fields added since are at defaults
                                                  if k in before.UNetConfig.__dataclass_fields__})).eval()}
    for net in arms.values():
        net.load_state_dict(arms["A"].state_dict())
    x, ctx, t = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 256), torch.tensor(500)
    with torch.no_grad():
        outs = {k: net(x, t, ctx) for k, net in arms.items()}
        assert all(torch.equal(outs["A"], o) for o in outs.values())  # the same function, bit for bit
        calls = {k: [] for k in arms}
        for r in range(args.rounds):
            for k in (list(arms) if r % 2 else list(arms)[::-1]):  # alternate the order against drift
                calls[k].append(time_calls(lambda net=arms[k]: net(x, t, ctx), args.reps))
    medians = {k: [statistics.median(r) for r in v] for k, v in calls.items()}  # per round
    ms = {k: 1e3 * statistics.median(v) for k, v in medians.items()}
    fastest = {k: 1e3 * min(min(r) for r in v) for k, v in calls.items()}  # least disturbed by other processes
    aa = [a / b for a, b in zip(medians["A"], medians["A2"])]
    ab = [a / b for a, b in zip(medians["A"], medians["B"])]
    result = {
        "what": "U-Net forward, no ControlNet attached: today's (A) against itself (A2) and against the pre-hook forward (B)",
        "config": {"block_out_channels": list(cfg.block_out_channels), "batch": 1, "latent": [16, 16], "threads": 2},
        "before_commit": args.before, "rounds": args.rounds, "reps": args.reps, "cpu": platform.processor() or platform.machine(),
        "median_ms": {k: round(v, 3) for k, v in ms.items()}, "min_ms": {k: round(v, 3) for k, v in fastest.items()},
        "ratio_AA_median": round(statistics.median(aa), 4), "ratio_AA_spread": [round(min(aa), 4), round(max(aa), 4)],
        "ratio_AB_median": round(statistics.median(ab), 4), "ratio_AB_spread": [round(min(ab), 4), round(max(ab), 4)],
    }
    (HERE / "hook_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
