"""Warm `latentdiff serve` txt2img vs the cold `latentdiff generate` CLI, default model, same prompt and settings.

Usage: python benchmarks/server/bench_server.py [--cold 3] [--warm 10] [--out benchmarks/server/results.json]
Cold: a fresh `python -m latentdiff.cli generate` process per image (import + load + draw + PNG), wall clock.
In-process: the library's pipe() in this process, alternated with the server requests (the server's overhead).
Warm: a `latentdiff serve` process started once; POST /sdapi/v1/txt2img timed per request from the client
(JSON + base64 PNG included), batch_size 1, and batch_size 4 per image.
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

import requests
import torch

from latentdiff.bench import free_port

PROMPT = "a red apple"


def cold_cli(runs: int) -> list[float]:
    """Seconds per `latentdiff generate` process, end to end."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "latentdiff.cli", "generate", PROMPT, "--seed", str(i),
                            "--out", str(Path(tmp) / f"{i}.png")], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    return times


def warm_server(runs: int) -> dict:
    """Per-request seconds against one `latentdiff serve` process (after one warm-up request)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "latentdiff.cli", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/sdapi/v1/txt2img"
    try:
        t_start = time.perf_counter()
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.perf_counter() - t_start > 120:
                    raise RuntimeError("server did not start: " + (proc.stdout.read() if proc.stdout else ""))
                time.sleep(0.1)
        requests.post(url, json={"prompt": PROMPT, "seed": 0}).raise_for_status()  # waits for the preload, warms up
        startup = time.perf_counter() - t_start
        from latentdiff.checkpoints.loader import ASSETS
        from latentdiff.pipelines import LatentDiffusionPipeline

        pipe = LatentDiffusionPipeline.from_pretrained(ASSETS / "default")
        pipe(PROMPT, seed=0, progress=False)
        single, batch, direct = [], [], []
        for i in range(runs):  # alternate server and in-process calls so load drift hits both alike
            t0 = time.perf_counter()
            r = requests.post(url, json={"prompt": PROMPT, "seed": i})
            single.append(time.perf_counter() - t0)
            r.raise_for_status()
            t0 = time.perf_counter()
            pipe(PROMPT, seed=i, progress=False)
            direct.append(time.perf_counter() - t0)
        for i in range(max(1, runs // 4)):
            t0 = time.perf_counter()
            r = requests.post(url, json={"prompt": PROMPT, "seed": i, "batch_size": 4})
            batch.append((time.perf_counter() - t0) / 4)
            assert len(r.json()["images"]) == 4
        info = json.loads(r.json()["info"])
        return {"startup_s": startup, "per_image_s": single, "batch4_per_image_s": batch, "in_process_pipe_s": direct,
                "settings": {k: info[k] for k in ("steps", "sampler_name", "cfg_scale", "width", "height")}}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    warm = warm_server(args.warm)
    cold = cold_cli(args.cold)
    result = {"cold_cli_s": cold, "warm": warm, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "load_avg_before_after": [load_before, os.getloadavg()[0]],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    med = statistics.median
    print("| path | median s per image | runs |\n|---|---:|---:|")
    print(f"| cold CLI `latentdiff generate` (process start to PNG) | {med(cold):.2f} | {len(cold)} |")
    print(f"| warm `latentdiff serve`, batch_size 1 (client round trip) | {med(warm['per_image_s']):.3f} | {len(warm['per_image_s'])} |")
    print(f"| in-process `pipe(...)` call, same settings (no HTTP, no PNG) | {med(warm['in_process_pipe_s']):.3f} | {len(warm['in_process_pipe_s'])} |")
    print(f"| warm `latentdiff serve`, batch_size 4, per image | {med(warm['batch4_per_image_s']):.3f} | {len(warm['batch4_per_image_s'])} |")
    print(f"server start-up incl. first image: {warm['startup_s']:.1f} s; settings {warm['settings']}; "
          f"load average {result['load_avg_before_after']}")


if __name__ == "__main__":
    main()
