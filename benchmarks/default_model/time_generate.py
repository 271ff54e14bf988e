"""Time `latentdiff generate` end to end with the embedded model, as a user runs it: a fresh process per image.

Run:  python benchmarks/default_model/time_generate.py [--repeats 5] [--steps N] [--threads 2] [--out FILE]
Writes benchmarks/default_model/generate_time.json: wall time of each run, the median, and one breakdown
(imports, model load, sampling + decode, PNG) from one in-process probe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, time, sys
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from latentdiff.pipelines import LatentDiffusionPipeline
from latentdiff.pipelines.png_metadata import save_png
t2 = time.perf_counter()
from latentdiff.checkpoints.loader import ASSETS
pipe = LatentDiffusionPipeline.from_pretrained(ASSETS / "default")
t3 = time.perf_counter()
out = pipe("a cat in a spacesuit", num_inference_steps=int(sys.argv[1]) or None, seed=0, progress=False)
t4 = time.perf_counter()
out.images[0].save(sys.argv[2])
t5 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "import_latentdiff_diffusers_transformers_s": t2 - t1, "load_model_s": t3 - t2,
       "sample_and_decode_s": t4 - t3, "save_png_s": t5 - t4}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="0 (default): the model's own default, as a user gets it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("generate_time.json")))
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1"}
    exe = Path(sys.executable).with_name("latentdiff")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        steps = ["--steps", str(a.steps)] if a.steps else []
        cmd = [str(exe), "generate", "a cat in a spacesuit", "--seed", "0", *steps, "--out", f"{tmp}/cat.png"]
        subprocess.run(cmd, env=env, check=True, capture_output=True)  # warm the page cache once (untimed)
        for i in range(a.repeats):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            runs.append(time.perf_counter() - t)
            print(f"run {i}: {runs[-1]:.2f} s", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare = time.perf_counter() - t
        probe = subprocess.run([sys.executable, "-c", PROBE, str(a.steps), f"{tmp}/probe.png"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = {"command": " ".join(["latentdiff generate 'a cat in a spacesuit' --seed 0", *steps]),
              "threads": a.threads, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M"),
              "runs_s": runs, "median_s": statistics.median(runs), "bare_python_s": bare,
              "breakdown": json.loads(probe)}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
