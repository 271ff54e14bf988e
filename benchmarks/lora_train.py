"""LoRA training cost: our trainer against diffusers' train_text_to_image_lora.py recipe, in the same run.

SD1.5 layout with random weights (memory and speed do not depend on the values), 512² images, batch 1,
rank 4 and 32: steps/s, peak memory, and the largest batch that fits in 24 GB — with and without gradient
checkpointing and (ours) cached latents/text embeddings.

* "diffusers": the script's recipe reproduced: UNet2DConditionModel + peft LoraConfig(r, lora_alpha=r,
  init_lora_weights="gaussian", target_modules=[to_k, to_q, to_v, to_out.0]) via unet.add_adapter, frozen
  U-Net/VAE/CLIP in fp16, LoRA params cast to fp32, AdamW(1e-4, wd 1e-2) on them, accelerate fp16 autocast;
  every step encodes the pixels with the VAE and the token ids with CLIP, adds DDPM noise, MSE on ε, clips
  gradients at 1.0 and logs the gathered loss with .item(), as the script does. Its pixels and token ids are
  ready-made tensors on the GPU (the script's data-loader workers decode images in parallel).
* "ours": latentdiff.training.lora.LoraTrainer on the same layout and targets (train_step() timed),
  reading a folder of random 512² PNGs; with cache on, latents and embeddings are computed once before timing.

Every variant runs in a fresh subprocess (peak memory: torch.cuda.max_memory_allocated on CUDA, the RSS
high-water mark on CPU). The largest batch is searched (doubling, then bisection) under
torch.cuda.set_per_process_memory_fraction(24 GiB / device memory). Raw results go to JSON; --table prints
the Markdown table of a JSON file.

    python benchmarks/lora_train.py                                   # CUDA, full SD1.5 layout
    python benchmarks/lora_train.py --device cpu --scale small       # CPU, small channel counts, 64² latents
    python benchmarks/lora_train.py --table benchmarks/results/lora_train_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GIB = 1024 ** 3
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

# (name, implementation, cached latents/text, gradient checkpointing)
VARIANTS = [
    ("diffusers", "diffusers", False, False),
    ("diffusers+gc", "diffusers", False, True),
    ("ours", "ours", True, False),
    ("ours+gc", "ours", True, True),
    ("ours-nocache", "ours", False, False),
    ("ours-nocache+gc", "ours", False, True),
]


# ---- model layouts ----------------------------------------------------------------------------------------------

def layouts(scale: str) -> dict:
    """SD1.5 component configs (latentdiff/checkpoints/presets/sd15.yaml); 'small' narrows every width, keeping levels and depth."""
    from latentdiff.checkpoints.presets import read_preset

    p = read_preset("sd15")
    if scale == "small":
        p["unet"].update(block_out_channels=[32, 64, 128, 128], cross_attention_dim=128, attention_head_dim=8)
        p["vae"].update(block_out_channels=[32, 64, 128, 128])
        p["text_encoder"].update(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                 projection_dim=128)
    return p


def frozen_parts(p: dict, device):
    """Random-weight VAE and CLIP text encoder plus the shipped tokenizer (built on the device: fast init)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.checkpoints.loader import load_tokenizer

    with torch.device(device):
        vae = AutoencoderKL.from_config({k: v for k, v in p["vae"].items() if not k.startswith("_")})
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in p["text_encoder"].items() if k != "architectures"}))
    return vae.eval(), text.eval(), load_tokenizer(None, "sd1")


# ---- diffusers' recipe ------------------------------------------------------------------------------------------

class DiffusersRecipe:
    """train_text_to_image_lora.py's training step on random weights, ready-made pixels and token ids."""

    def __init__(self, p: dict, rank: int, batch: int, gc_on: bool, device, dtype):
        import torch
        from accelerate import Accelerator
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig

        self.acc = Accelerator(mixed_precision={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no"),
                               cpu=device.type == "cpu")
        with torch.device(device):
            unet = UNet2DConditionModel.from_config({k: v for k, v in p["unet"].items() if not k.startswith("_")})
        vae, text, tok = frozen_parts(p, device)
        self.sched = DDPMScheduler.from_config({k: v for k, v in p["scheduler"].items() if not k.startswith("_")})
        for m in (unet, vae, text):
            m.requires_grad_(False)
        unet.to(device, dtype), vae.to(device, dtype), text.to(device, dtype)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
        if dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)
        if gc_on:
            unet.enable_gradient_checkpointing()
        self.params = [q for q in unet.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.unet, self.optimizer = self.acc.prepare(unet, optimizer)
        self.unet.train()
        self.vae, self.text, self.dtype, self.device = vae, text, dtype, device
        self.trainable = sum(q.numel() for q in self.params)
        self.set_batch(batch)

    def set_batch(self, batch: int) -> None:
        import torch

        res = 8 * self.unet_config("sample_size")
        g = torch.Generator(self.device).manual_seed(0)
        self.pixels = torch.rand(batch, 3, res, res, generator=g, device=self.device) * 2 - 1  # (B, 3, H, W)
        self.ids = torch.randint(0, 49407, (batch, 77), generator=g, device=self.device)

    def unet_config(self, key):
        return getattr(self.acc.unwrap_model(self.unet).config, key)

    def step(self) -> float:
        import torch
        import torch.nn.functional as F

        with self.acc.accumulate(self.unet):
            latents = self.vae.encode(self.pixels.to(dtype=self.dtype)).latent_dist.sample()
            latents = latents * self.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
            noisy = self.sched.add_noise(latents, noise, t)
            context = self.text(self.ids, return_dict=False)[0]
            pred = self.unet(noisy, t, context, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            avg = self.acc.gather(loss.repeat(latents.shape[0])).mean()
            self.acc.backward(loss)
            if self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad()
        return avg.item()


# ---- ours -------------------------------------------------------------------------------------------------------

def image_folder(folder: Path, n: int, res: int) -> Path:
    """n smooth random RGB PNGs with captions (made once, reused across variants)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        if (folder / f"{i:04d}.png").is_file():
            continue
        small = (rng.random((res // 16, res // 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((res, res), Image.BICUBIC).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"a random picture number {i}, studio light")
    return folder


class OursRecipe:
    """latentdiff's LoraTrainer on random-weight SD1.5-layout components; one train_step() per step."""

    def __init__(self, p: dict, rank: int, batch: int, gc_on: bool, cached: bool, device, dtype, work: Path, images: int):
        import torch

        from latentdiff.checkpoints import Components
        from latentdiff.models.unet import UNet, UNetConfig
        from latentdiff.training.lora import LoraTrainConfig, LoraTrainer

        with torch.device(device):
            unet = UNet(UNetConfig.from_diffusers(p["unet"]))
        vae, text, tok = frozen_parts(p, device)
        c = Components(unet, vae, text, tok, dict(p["scheduler"]), kind="sd1", source="random")
        res = 8 * p["unet"]["sample_size"]
        data = image_folder(work / f"images-{res}", images, res)
        mp = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
        cfg = LoraTrainConfig(model="memory", data=str(data), output_dir=str(work / "run"), cache_dir=str(work / f"cache-{res}"),
                              rank=rank, alpha=float(rank), targets=list(TARGETS), init="gaussian", resolution=res,
                              buckets=False, cache_latents=cached, cache_text=cached, batch_size=batch, lr=1e-4,
                              mixed_precision=mp, gradient_checkpointing=gc_on, checkpoint_every=0, eval_items=0,
                              device=device.type).check()
        t0 = time.perf_counter()
        self.trainer = LoraTrainer(cfg, components=c, progress=False)
        self.setup_s = time.perf_counter() - t0
        self.trainer._set_train(True)
        self.trainable = sum(q.numel() for q in self.trainer.unet_params)
        self.n = 0

    def set_batch(self, batch: int) -> None:
        self.trainer.cfg.batch_size = batch
        self.trainer._load_data()  # rebuilds the batch sampler; the caches are reused from disk

    def step(self) -> float:
        losses = self.trainer.train_step(self.n)
        self.n += 1
        return float(losses[-1])


# ---- measuring --------------------------------------------------------------------------------------------------

def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(recipe, n: int, device) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of n steps (CPU time is the fair clock on a shared, loaded CPU)."""
    wall, cpu = [], []
    for _ in range(n):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        recipe.step()
        sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def fits(recipe, batch: int, device) -> bool:
    """Two steps at this batch without running out of memory."""
    import torch

    try:
        recipe.set_batch(batch)
        recipe.step()
        recipe.step()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def largest_batch(recipe, device, limit: int) -> int:
    """Doubling then bisection on the batch size under the memory cap; 0 if batch 1 does not fit."""
    lo, hi = 0, None
    b = 1
    while b <= limit:
        if fits(recipe, b, device):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(recipe, mid, device) else (lo, mid)
    return lo


class RssPeak:
    """Highest resident set size seen while active (polls /proc/self/statm; the process-wide ru_maxrss cannot reset)."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def child(spec: dict) -> dict:
    """One variant in this (fresh) process."""
    import torch

    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[spec["dtype"]]
    p = layouts(spec["scale"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if spec["impl"] == "diffusers":
        recipe = DiffusersRecipe(p, spec["rank"], 1, spec["gc"], device, dtype)
        setup = time.perf_counter() - t0
    else:
        recipe = OursRecipe(p, spec["rank"], 1, spec["gc"], spec["cached"], device, dtype, Path(spec["work"]), spec["images"])
        setup = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:  # on CPU: the memory of the training steps, not of model building and caching
        timed_steps(recipe, spec["warmup"], device)  # first steps allocate and pick kernels
        wall, cpu = timed_steps(recipe, spec["steps"], device)
    clock = cpu if spec.get("clock") == "cpu" else wall
    out = {**spec, "setup_s": round(setup, 2), "step_s": [round(t, 4) for t in wall], "step_cpu_s": [round(t, 4) for t in cpu],
           "steps_per_s": round(len(clock) / sum(clock), 4), "trainable_params": recipe.trainable}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        if spec["max_batch"]:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_gib"] * GIB / total), device)
            out["largest_batch"] = largest_batch(recipe, device, spec["max_batch"])
            out["memory_cap_gib"] = spec["memory_gib"]
    else:
        out["peak_rss_gib"] = round(rss.peak / GIB, 3)  # during the steps
        out["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # whole run
    return out


# ---- orchestration and table ------------------------------------------------------------------------------------

def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        import diffusers
        import peft

        info.update(diffusers=diffusers.__version__, peft=peft.__version__)
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    return info


def table(results: dict) -> str:
    """Markdown: one row per variant and rank, speed relative to diffusers' recipe at the same rank."""
    rows = results["runs"]
    cuda = results["device"] == "cuda"
    mem = "peak GiB (batch 1)" if cuda else "peak RSS GiB during steps"
    clock = " (CPU time)" if rows and rows[0].get("clock") == "cpu" else ""
    head = f"| variant | rank | cached latents+text | grad. checkpointing | steps/s{clock} | × diffusers | {mem} |"
    sep = "|---|---|---|---|---|---|---|"
    if cuda:
        head += f" largest batch ≤ {results['memory_gib']} GiB |"
        sep += "---|"
    lines = [head, sep]
    base = {(r["rank"], r["gc"]): r["steps_per_s"] for r in rows if r["impl"] == "diffusers" and "steps_per_s" in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['rank']} | | | error: {r['error'][:60]} | | |")
            continue
        ref = base.get((r["rank"], r["gc"]))
        ratio = f"{r['steps_per_s'] / ref:.2f}×" if ref else ""
        line = (f"| {r['name']} | {r['rank']} | {'yes' if r['cached'] else 'no'} | {'on' if r['gc'] else 'off'} | "
                f"{r['steps_per_s']:.3f} | {ratio} | {r.get('peak_gib', r.get('peak_rss_gib', ''))} |")
        if cuda:
            line += f" {r.get('largest_batch', '')} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--scale", default="full", choices=["full", "small"], help="full SD1.5 widths, or narrow (CPU)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 32])
    ap.add_argument("--variants", nargs="+", default=[v[0] for v in VARIANTS], help="names from VARIANTS")
    ap.add_argument("--runs", nargs="+", metavar="NAME:RANK", help="exact (variant, rank) pairs instead of ranks × variants")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0: torch's default)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="steps/s from wall time, or from process CPU time (single-threaded runs on a shared CPU)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="frozen weights: fp16 (CUDA default) | bf16 | fp32 (CPU default)")
    ap.add_argument("--max-batch", type=int, default=128, help="largest batch searched on CUDA (0: skip the search)")
    ap.add_argument("--memory-gib", type=float, default=24.0)
    ap.add_argument("--images", type=int, default=0, help="random training images on disk (default: max(8, max-batch))")
    ap.add_argument("--work", default=None, help="folder for the random images and caches (default: a temp folder)")
    ap.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/lora_train_<device>.json)")
    ap.add_argument("--table", metavar="JSON", help="print the Markdown table of a results file and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if args.child:
        spec = json.loads(args.child)
        try:
            print("RESULT " + json.dumps(child(spec)))
        except Exception as e:  # reported in the JSON, not hidden
            print("RESULT " + json.dumps({**spec, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}))
        return 0

    dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    max_batch = args.max_batch if args.device == "cuda" else 0
    work = Path(args.work or tempfile.mkdtemp(prefix="lora-bench-"))
    out = Path(args.out or RESULTS / f"lora_train_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": "lora_train", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "device": args.device, "scale": args.scale, "dtype": dtype, "resolution": 512, "memory_gib": args.memory_gib,
               "machine": machine(args.device), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
               "runs": []}
    by_name = {v[0]: v for v in VARIANTS}
    if args.runs:
        pairs = [(by_name[r.split(":")[0]], int(r.split(":")[1])) for r in args.runs]
    else:
        pairs = [(by_name[n], rank) for rank in args.ranks for n in args.variants]
    for (name, impl, cached, gc_on), rank in pairs:
        spec = {"name": name, "impl": impl, "cached": cached, "gc": gc_on, "rank": rank, "device": args.device,
                "dtype": dtype, "scale": args.scale, "steps": args.steps, "warmup": args.warmup, "max_batch": max_batch,
                "memory_gib": args.memory_gib, "work": str(work), "images": args.images or max(8, max_batch),
                "threads": args.threads, "clock": args.clock}
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        run = json.loads(line[7:]) if line else {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        run["load_avg_before"] = round(load, 2)
        results["runs"].append(run)
        print(f"{name:18s} rank {rank:3d}: " + (f"{run['steps_per_s']:.3f} steps/s" if "steps_per_s" in run else run["error"]),
              flush=True)
        out.write_text(json.dumps(results, indent=2))  # partial results survive a time limit
    print(table(results))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
