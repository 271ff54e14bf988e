"""4 LCM steps without CFG against 25 DPM++ 2M steps with CFG 7.5, SD1.5 layout, random weights, same run.

    python benchmarks/few_step/lcm_vs_dpm.py [--size 512] [--dtype auto] [--e2e] [--full] --out benchmarks/results/few_step_cpu.json

Both arms use one pipeline (ours) on one set of weights. By default both are computed from the same run's measured
parts: text encoding (prompt only for LCM; prompt and negative for DPM++), U-Net calls on batch 1 (LCM, no CFG) and
batch 2 (CFG: the doubled batch; the scheduler's own work is negligible next to a U-Net call), and one VAE decode.
--e2e also draws the LCM arm end to end; --full the DPM++ arm too (minutes on a CPU). Raw timings and the machine's
load go into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from latentdiff.bench import harness  # noqa: E402  (the harness ships in the package)
from latentdiff.pipelines import LatentDiffusionPipeline  # noqa: E402

PROMPT, NEGATIVE = "a photo of a red fox in the snow, detailed", "blurry, low quality"


log = harness.log


def clock(fn, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls (latentdiff.bench's timer, on the CPU)."""
    return harness.timed(fn, warmup=0, repeats=repeats, device=torch.device("cpu"))["times_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--e2e", action="store_true", help="also draw the 4-step LCM arm end to end")
    p.add_argument("--full", action="store_true", help="also draw the 25-step DPM++ arm end to end (minutes on a CPU)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    pipe = LatentDiffusionPipeline(harness.build_components("sd15", 0), dtype=a.dtype)
    build_s = time.perf_counter() - t0
    h = w = a.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, h, w, generator=g).to(pipe.dtype)                        # (1, 4, h, w)
    ctx = pipe.encode_text([PROMPT], [NEGATIVE], True)                             # (2, 77, 768): [uncond; cond]
    t = torch.tensor(500)
    with torch.inference_mode():
        unet1 = lambda: pipe.unet(x, t, ctx[1:])                                   # one LCM step: cond only
        unet2 = lambda: pipe.unet(torch.cat([x, x]), t, ctx)                       # one CFG step: doubled batch
        log(f"built in {build_s:.0f} s; warm-up")
        clock(unet1, 1)                                                            # warm-up (allocator, kernels)
        u1 = clock(unet1, a.repeats)
        log(f"U-Net batch 1: {u1}")
        u2 = clock(unet2, a.repeats)
        log(f"U-Net batch 2: {u2}")
        enc1 = clock(lambda: pipe.encode_text([PROMPT], [NEGATIVE], False), a.repeats)
        enc2 = clock(lambda: pipe.encode_text([PROMPT], [NEGATIVE], True), a.repeats)
        dec = clock(lambda: pipe.decode(x), 1)
    steps_lcm: list[float] = []
    last = [time.perf_counter()]

    def on_step(step, total, latents):
        now = time.perf_counter()
        steps_lcm.append(now - last[0])
        last[0] = now

    log(f"decode: {dec}")
    lcm_e2e = None
    if a.e2e:
        t1 = time.perf_counter()
        last[0] = t1
        pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, sampler="lcm", seed=1, height=a.size, width=a.size,
             progress=False, callback=on_step)
        lcm_e2e = time.perf_counter() - t1
    dpm_e2e = None
    if a.full:
        t2 = time.perf_counter()
        pipe(PROMPT, NEGATIVE, num_inference_steps=25, guidance_scale=7.5, sampler="dpmpp_2m", seed=1, height=a.size,
             width=a.size, progress=False)
        dpm_e2e = time.perf_counter() - t2
    med = statistics.median
    dpm_computed = med(enc2) + 25 * med(u2) + dec[0]
    lcm_computed = med(enc1) + 4 * med(u1) + dec[0]
    result = {
        "what": "LCM 4 steps, guidance 1 (no CFG) vs DPM++ 2M 25 steps, CFG 7.5; SD1.5 layout, random weights, ours",
        "size": a.size, "dtype": str(pipe.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cpu_flags": harness.cpu_flags(), "build_s": build_s,
        "unet_batch1_s": u1, "unet_batch2_s": u2, "encode_prompt_s": enc1, "encode_both_s": enc2, "decode_s": dec,
        "lcm_step_s": steps_lcm, "lcm_end_to_end_s": lcm_e2e, "lcm_computed_s": lcm_computed,
        "dpm_end_to_end_s": dpm_e2e, "dpm_computed_s": dpm_computed,
        "speedup_end_to_end": (dpm_e2e or dpm_computed) / (lcm_e2e or lcm_computed),
        "speedup_sampling": 25 * med(u2) / (4 * med(u1)),
        "dpm_source": "measured end to end" if dpm_e2e else "computed: encode(2) + 25 × U-Net(batch 2) + decode, same run",
        "lcm_source": "measured end to end" if lcm_e2e else "computed: encode(1) + 4 × U-Net(batch 1) + decode, same run",
    }
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("dtype", "lcm_end_to_end_s", "lcm_computed_s", "dpm_computed_s", "dpm_end_to_end_s",
                                             "speedup_end_to_end", "speedup_sampling", "loadavg_before")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
