"""Cold start: `latentdiff generate` with the embedded model vs diffusers' StableDiffusionPipeline on the same folder.

Each run is a fresh process, timed from spawn to PNG on disk (wall clock and the child's CPU time, user + sys). The arms
alternate within each round (ours, diffusers, ours --threads 1, ...) so machine load hits them alike; medians are
reported with the load average around every run. Also, once each: a `python -X importtime` breakdown of both arms
(self time summed per top-level package), and our load steps timed in one process against the libraries' loaders.

    python benchmarks/cold_start.py [--rounds 3] [--one-thread] [--before OTHER_CHECKOUT] [--out ...json]

Both draw "a cat in a spacesuit", seed 0, the model's own settings (10 DPM++ 2M steps, CFG 3, its native size), in the
same dtype: ours' automatic choice (bf16 on CPUs with native bf16, else fp32), given to diffusers as `dtype`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "latentdiff" / "assets" / "default"
PROMPT = "a cat in a spacesuit"

DIFFUSERS = f"""
import json, sys, torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()  # ours' "auto" dtype rule
pipe = StableDiffusionPipeline.from_pretrained({str(MODEL)!r}, safety_checker=None, local_files_only=True,
                                               dtype=torch.bfloat16 if native_bf16 else torch.float32)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
pipe.set_progress_bar_config(disable=True)
cfg = json.load(open({str(MODEL / "generation_config.json")!r}))
image = pipe({PROMPT!r}, num_inference_steps=cfg["num_inference_steps"], guidance_scale=cfg["guidance_scale"],
             generator=torch.Generator("cpu").manual_seed(0)).images[0]
image.save(sys.argv[1])
"""

# our load steps against the libraries' loaders, in one process after the imports (two rounds; the second is warm)
LOAD_STEPS = f"""
import json, time
from pathlib import Path
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer
from latentdiff.checkpoints.direct import direct_text_encoder, direct_vae
from latentdiff.checkpoints.loader import bundled_tokenizer_dir
M = Path({str(MODEL)!r})
steps = [("tokenizer: tokenizer.json (library)", lambda: CLIPTokenizer.from_pretrained(str(M / "tokenizer"))),
         ("tokenizer: bundled vocab + merges (ours)", lambda: CLIPTokenizer.from_pretrained(str(bundled_tokenizer_dir("sd1")))),
         ("VAE: AutoencoderKL.from_pretrained", lambda: AutoencoderKL.from_pretrained(str(M / "vae"))),
         ("VAE: direct_vae (ours)", lambda: direct_vae(M / "vae")),
         ("text encoder: CLIPTextModel.from_pretrained", lambda: CLIPTextModel.from_pretrained(str(M / "text_encoder"))),
         ("text encoder: direct_text_encoder (ours)", lambda: direct_text_encoder(M / "text_encoder"))]
out = {{name: [] for name, _ in steps}}
for _ in range(2):  # each library/ours pair back to back, twice: the first round pays one-time costs (lazy imports)
    for name, f in steps:
        c, w = time.process_time(), time.perf_counter()
        f()
        out[name].append({{"cpu_s": round(time.process_time() - c, 4), "wall_s": round(time.perf_counter() - w, 4)}})
print(json.dumps(out))
"""


ONE_THREAD = False  # --one-thread: every arm runs with OMP_NUM_THREADS=1


def env(root: Path = ROOT) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(root), TQDM_DISABLE="1")
    e.pop("OMP_NUM_THREADS", None)
    if ONE_THREAD:
        e["OMP_NUM_THREADS"] = "1"
    return e


def arms(tmp: Path, before: str | None) -> dict[str, list[str]]:
    py = sys.executable
    ours = [py, "-m", "latentdiff.cli", "generate", PROMPT, "--seed", "0"]
    a = {"ours": ours + ["--out", str(tmp / "ours.png")],
         "diffusers": [py, "-c", DIFFUSERS, str(tmp / "diffusers.png")]}
    if not ONE_THREAD:
        a["ours --threads 1"] = ours + ["--threads", "1", "--out", str(tmp / "ours-t1.png")]
    if before:  # another checkout of latentdiff (e.g. main before this change), same command
        a[f"ours before ({before})"] = ours + ["--out", str(tmp / "before.png")]
    return a


def timed(cmd: list[str], root: Path = ROOT) -> dict:
    """One fresh process: wall seconds, the child's CPU seconds, load average before and after."""
    load0, before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env(root), capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"{cmd[:4]} failed:\n{p.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def import_breakdown(cmd: list[str]) -> dict[str, float]:
    """`python -X importtime`: self time per top-level package (seconds), largest first, plus the total."""
    p = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=tempfile.gettempdir(), env=env(), capture_output=True, text=True)
    per: dict[str, int] = {}
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            us, _, name = line[len("import time:"):].split("|")
            top = name.strip().split(".")[0]
            per[top] = per.get(top, 0) + int(us)
    total = sum(per.values())
    big = {k: round(v / 1e6, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 20_000}
    return {**big, "(other)": round((total - sum(per[k] for k in big)) / 1e6, 3), "(total)": round(total / 1e6, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", help="a second latentdiff checkout to time as one more arm (its PYTHONPATH)")
    ap.add_argument("--one-thread", action="store_true",
                    help="all arms on one thread (OMP_NUM_THREADS=1): CPU time then barely depends on other load")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cold_start.json"))
    args = ap.parse_args()
    global ONE_THREAD
    ONE_THREAD = args.one_thread
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    cmds = arms(tmp, args.before)
    roots = {name: Path(args.before) if name.startswith("ours before") else ROOT for name in cmds}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_start = os.getloadavg()
    bare = timed([sys.executable, "-c", "pass"])
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    for r in range(args.rounds):
        order = list(cmds) if r % 2 == 0 else list(cmds)[::-1]  # ABC then CBA: drift in load hits every arm alike
        for name in order:
            runs[name].append(timed(cmds[name], roots[name]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    imports = {name: import_breakdown(cmds[name]) for name in ("ours", "diffusers")}
    p = subprocess.run([sys.executable, "-c", LOAD_STEPS], env=env(), capture_output=True, text=True, check=True)
    load_steps = json.loads(p.stdout.strip().splitlines()[-1])
    med = {name: {k: round(statistics.median(x[k] for x in rs), 3) for k in ("wall_s", "cpu_s")} for name, rs in runs.items()}
    ratios = {name: {k: round(med[name][k] / med["diffusers"][k], 3) for k in ("wall_s", "cpu_s")} for name in runs}
    import torch

    result = {
        "what": "fresh-process cold start to PNG, embedded model, 'a cat in a spacesuit', seed 0, model's own settings",
        "one_thread": ONE_THREAD,
        "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads_default": torch.get_num_threads(), "python": platform.python_version(),
                    "native_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "bare_python": bare, "commands": {k: " ".join(v[1:3]) + " ..." for k, v in cmds.items()},
        "runs": runs, "median": med, "ratio_vs_diffusers": ratios,
        "import_self_time_s": imports, "load_steps": load_steps,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| arm | median wall (s) | × diffusers | median CPU (s) | × diffusers |\n|---|---:|---:|---:|---:|")
    for name in runs:
        print(f"| {name} | {med[name]['wall_s']:.2f} | {ratios[name]['wall_s']:.2f}× | {med[name]['cpu_s']:.2f} | "
              f"{ratios[name]['cpu_s']:.2f}× |")


if __name__ == "__main__":
    main()
