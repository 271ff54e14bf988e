"""Choose the default model's sampler, steps and guidance by measurement: judge metrics on the held-out emoji vs time.

Run:  python benchmarks/default_model/sweep.py data/emoji [--model latentdiff/assets/default]
Writes benchmarks/default_model/sweep.json (raw numbers, one row per setting).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from latentdiff.evaluation.evaluate import evaluate, get_judge, load_real
from latentdiff.pipelines import LatentDiffusionPipeline

SETTINGS = [  # (sampler, steps, guidance)
    ("dpmpp_2m", 25, 7.5), ("dpmpp_2m", 15, 7.5), ("dpmpp_2m", 10, 7.5),
    ("euler_a", 25, 7.5), ("ddim", 25, 7.5), ("unipc", 15, 7.5),
    ("dpmpp_2m", 25, 3.0), ("dpmpp_2m", 25, 5.0), ("dpmpp_2m", 25, 10.0),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "latentdiff" / "assets" / "default"))
    ap.add_argument("--work", default="runs/eval")
    ap.add_argument("--out", default=str(Path(__file__).with_name("sweep.json")))
    ap.add_argument("--per-prompt", type=int, default=1)
    ap.add_argument("--settings", default="", help="SAMPLER:STEPS:GUIDANCE,... instead of the built-in list")
    ap.add_argument("--append", action="store_true", help="add the rows to --out (a row of the same setting is replaced)")
    args = ap.parse_args()
    settings = [(a, int(b), float(c)) for a, b, c in (x.split(":") for x in args.settings.split(","))] if args.settings else SETTINGS
    torch.set_num_threads(1)  # on a shared, loaded 2-core machine one thread per process is faster (OpenMP waits)
    pipe = LatentDiffusionPipeline.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = load_real(args.data, side, work)
    judge = get_judge(cache, work / f"judge-{side}.safetensors")
    old = json.loads(Path(args.out).read_text())["rows"] if args.append and Path(args.out).is_file() else []
    rows = []
    for sampler, steps, guidance in settings:
        r = evaluate(pipe, cache, judge, steps=steps, sampler=sampler, guidance=guidance, per_prompt=args.per_prompt, progress=False)
        rows.append({**asdict(r), "seconds_per_image": r.seconds / r.images})
        print(f"{sampler:9s} {steps:3d} steps  g {guidance:4.1f}: FD {r.fd_generated:7.2f}  subgroup acc {r.acc_subgroup_generated:.3f}  "
              f"group acc {r.acc_group_generated:.3f}  {r.seconds / r.images * 1000:.0f} ms/image", flush=True)
    key = lambda r: (r["sampler"], r["steps"], r["guidance"])  # noqa: E731
    rows = [r for r in old if key(r) not in {key(n) for n in rows}] + rows
    Path(args.out).write_text(json.dumps({"model": args.model, "machine": platform.processor() or platform.machine(),
                                          "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%d %H:%M"),
                                          "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
