"""Convergence study of the architecture lab: U-Net variants and a DiT of equal size, same data, seeds and step budget.

Stand-in for `latentdiff train` (the from-scratch trainer was not ready when this study ran); rerun the study with the
real trainer on VAE latents when it lands. What this driver does instead, and says in its JSON:
  * data: Fluent 3D emoji from the dataset builder's folder (default /tmp/emoji), box-downsampled to 16×16 RGB in
    [-1, 1] and used directly as the "latents" (3 channels instead of 4, no VAE); the builder's train/holdout split;
  * text: captions through the shipped CLIP tokenizer and a frozen, randomly initialised 2-layer CLIP text encoder
    (width 64, 16 tokens), the same for every variant;
  * objective: latentdiff.training.loss.DiffusionLoss (ε-prediction, SD's scaled-linear schedule), AdamW,
    linear warm-up, the same batches, timesteps and noise for every variant (one seed);
  * metric: held-out denoising loss at fixed timesteps and fixed noise (the default model's judge was not available),
    plus a grid of DDIM samples for the eye.

Usage: python benchmarks/architectures/convergence.py [--steps 250] [--variants configs/unet-base.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ["unet-base", "unet-classic", "unet-blurpool", "unet-shuffle", "unet-narrow", "dit-base"]
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "clip_sample": False, "prediction_type": "epsilon"}
EVAL_TIMESTEPS = (50, 250, 500, 750, 950)


def load_images(root: Path, size: int, cache: Path) -> dict:
    """Train/holdout emoji as (N, 3, size, size) float tensors in [-1, 1], with captions; cached outside the repo."""
    from PIL import Image

    cache_file = cache / f"emoji-{size}.pt"
    if cache_file.is_file():
        return torch.load(cache_file, weights_only=True)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    data: dict = {"train": [], "train_text": [], "holdout": [], "holdout_text": []}
    for row in tqdm(rows, desc=f"emoji → {size}²", file=sys.stderr):
        with Image.open(root / row["file_name"]) as im:
            im = im.convert("RGB").resize((size, size), Image.BOX)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
        split = "holdout" if row.get("split") == "holdout" else "train"
        data[split].append(x)
        data[split + "_text"].append(row["text"])
    out = {"train": torch.stack(data["train"]), "holdout": torch.stack(data["holdout"]),
           "train_text": data["train_text"], "holdout_text": data["holdout_text"]}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache_file)
    return out


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1  # uint8 → [-1, 1]


@torch.no_grad()
def encode_captions(texts: list[str], *, width: int, tokens: int, seed: int) -> torch.Tensor:
    """(N, tokens, width) embeddings from a frozen random 2-layer CLIP text encoder, identical for every variant."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.checkpoints.loader import load_tokenizer

    tok = load_tokenizer(None, "sd1")
    torch.manual_seed(seed)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=width, intermediate_size=2 * width,
                                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=1)).eval()
    ids = tok(texts, padding="max_length", max_length=tokens, truncation=True, return_tensors="pt").input_ids
    return torch.cat([enc(chunk).last_hidden_state for chunk in ids.split(256)])


def study_config(path: Path, size: int, channels: int, context: int):
    """A preset, adapted to the stand-in data: `channels` in/out, `context`-wide text, `size` latents."""
    from latentdiff.profiling import load_arch_config

    name, cfg, desc = load_arch_config(path)
    return name, replace(cfg, in_channels=channels, out_channels=channels, cross_attention_dim=context, sample_size=size), desc


@torch.no_grad()
def eval_loss(model, loss, x0: torch.Tensor, ctx: torch.Tensor, noise: torch.Tensor, batch: int) -> float:
    """Mean ε-MSE over held-out images × EVAL_TIMESTEPS with fixed noise (lower is better)."""
    model.eval()
    total, n = 0.0, 0
    for k, t_val in enumerate(EVAL_TIMESTEPS):
        for i in range(0, len(x0), batch):
            xb, cb, nb = x0[i:i + batch], ctx[i:i + batch], noise[k, i:i + batch]
            t = torch.full((len(xb),), t_val, dtype=torch.long)
            pred = model(loss.add_noise(xb, nb, t), t, cb)
            total += (pred - nb).square().mean(dim=(1, 2, 3)).sum().item()
            n += len(xb)
    model.train()
    return total / n


@torch.no_grad()
def sample(model, ctx: torch.Tensor, size: int, channels: int, steps: int, seed: int) -> torch.Tensor:
    """DDIM samples (N, C, s, s) in [-1, 1] for the given text embeddings (no guidance)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config({k: v for k, v in SCHEDULER.items() if k != "_class_name"})
    sched.set_timesteps(steps)
    x = torch.randn(len(ctx), channels, size, size, generator=torch.Generator().manual_seed(seed))
    model.eval()
    for t in sched.timesteps:
        x = sched.step(model(x, t, ctx), t, x).prev_sample
    return x.clamp(-1, 1)


def train_variant(name: str, cfg, data: dict, args) -> tuple[dict, torch.Tensor]:
    """Train one architecture for args.steps steps; returns its record and its DDIM samples."""
    from latentdiff.models.dit import count_parameters
    from latentdiff.profiling import build_model, count_flops
    from latentdiff.training.loss import DiffusionLoss

    torch.manual_seed(args.seed)
    model = build_model(cfg).train()
    loss_fn = DiffusionLoss(SCHEDULER)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    gen = torch.Generator().manual_seed(args.seed)  # same batches, timesteps and noise for every variant
    x_all, c_all = data["train"], data["train_ctx"]
    order = torch.randperm(len(x_all), generator=gen)
    pos, train_curve, eval_curve, seconds = 0, [], [], 0.0
    smooth = None
    bar = tqdm(range(1, args.steps + 1), desc=name, file=sys.stderr, leave=False)
    for step in bar:
        if pos + args.batch > len(order):
            order, pos = torch.randperm(len(x_all), generator=gen), 0
        idx = order[pos:pos + args.batch]
        pos += args.batch
        t0 = time.perf_counter()
        loss = loss_fn(model, to_model_range(x_all[idx]), c_all[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        seconds += time.perf_counter() - t0
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if step % 10 == 0:
            train_curve.append([step, round(loss.item(), 5), round(smooth, 5), round(seconds, 2)])
            bar.set_postfix(loss=f"{smooth:.4f}")
        if step % args.eval_every == 0 or step == args.steps:
            eval_curve.append([step, round(eval_loss(model, loss_fn, data["hold_x"], data["hold_ctx"], data["hold_noise"],
                                                     args.batch * 4), 5), round(seconds, 2)])
    flops_fwd, params = count_flops(cfg, 1, args.size, args.tokens)
    record = {"name": name, "arch": "dit" if "patch_size" in cfg.to_dict() else "unet", "params": params,
              "fwd_flops_per_sample": flops_fwd, "train_seconds": round(seconds, 1),
              "seconds_per_step": round(seconds / args.steps, 3), "final_eval_loss": eval_curve[-1][1],
              "train_curve": train_curve, "eval_curve": eval_curve, "config": cfg.to_dict()}
    samples = sample(model, data["hold_ctx"][: args.samples], args.size, args.channels, 25, args.seed)
    return record, samples


def steps_to_reach(curve: list[list[float]], target: float) -> float | None:
    """First step (linearly interpolated between evaluations) at which an eval curve is at or below target."""
    prev = None
    for step, value, *_ in curve:
        if value <= target:
            if prev is None or prev[1] == value:
                return float(step)
            (s0, v0) = prev
            return s0 + (v0 - target) / (v0 - value) * (step - s0)
        prev = (step, value)
    return None


def write_outputs(records: list[dict], grids: dict[str, torch.Tensor], reference: torch.Tensor, meta: dict, out: Path) -> None:
    """convergence.json, the charts and samples.png; all written atomically."""
    from latentdiff.profiling import write_text_atomic

    dit = next((r for r in records if r["arch"] == "dit"), None)
    if dit:
        for r in records:
            reached = steps_to_reach(r["eval_curve"], dit["final_eval_loss"])
            r["steps_to_dit_final_loss"] = None if reached is None else round(reached, 1)
    write_text_atomic(out / "convergence.json", json.dumps({**meta, "variants": records}, indent=1) + "\n")
    write_charts(records, meta, out)
    write_samples(grids, reference, out)


def write_charts(records: list[dict], meta: dict, out: Path) -> None:
    """convergence.png (held-out loss vs step) and train_loss.png from the records."""
    from latentdiff.charts import draw_chart

    evals = [{"label": r["name"], "x": [p[0] for p in r["eval_curve"]], "y": [p[1] for p in r["eval_curve"]]} for r in records]
    draw_chart(evals, out / "convergence.png", title=f"held-out ε-MSE vs step ({meta['data']['summary']})",
               xlabel="training step", ylabel="held-out loss", log_y=True)
    trains = [{"label": r["name"], "x": [p[0] for p in r["train_curve"]], "y": [p[2] for p in r["train_curve"]]} for r in records]
    draw_chart(trains, out / "train_loss.png", title="training loss (EMA 0.95) vs step", xlabel="training step", ylabel="loss",
               log_y=True)
    # No loss-vs-seconds chart: the shared machine's load swung 1.5-10× during the run, so wall-clock is not comparable
    # across variants; speed comes from `latentdiff profile` (configs timed in turns) instead.


def write_samples(grids: dict[str, torch.Tensor], reference: torch.Tensor, out: Path) -> None:
    """samples.png: the held-out reference images, then one row of DDIM samples per variant, 4× nearest-upscaled."""
    from PIL import Image, ImageDraw

    from latentdiff.fileio import atomic_write

    scale, rows = 4, [("reference", reference)] + list(grids.items())
    n, s = reference.shape[0], reference.shape[-1] * scale
    sheet = Image.new("RGB", (120 + n * (s + 4), len(rows) * (s + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, imgs) in enumerate(rows):
        draw.text((4, r * (s + 4) + s // 2), label, fill="black")
        for i, img in enumerate(imgs):
            arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).contiguous().numpy()
            tile = Image.fromarray(arr).resize((s, s), Image.NEAREST)
            sheet.paste(tile, (120 + i * (s + 4), r * (s + 4)))
    atomic_write(out / "samples.png", lambda tmp: sheet.save(tmp, format="PNG"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=[str(REPO / "configs" / f"{v}.yaml") for v in DEFAULT_VARIANTS])
    p.add_argument("--data", default="/tmp/emoji", help="the emoji dataset builder's output folder")
    p.add_argument("--cache", default="/tmp/latentdiff-archlab", help="where the downsampled images are cached (not the repo)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--holdout", type=int, default=128, help="held-out images used for the eval loss")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared with other training)")
    p.add_argument("--seed", type=int, default=0, help="training seed: init, batch order, noise, timesteps")
    p.add_argument("--replot", action="store_true", help="only redraw the charts from OUT/convergence.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.replot:
        doc = json.loads((Path(args.out) / "convergence.json").read_text())
        write_charts(doc["variants"], doc, Path(args.out))
        return 0
    from latentdiff.profiling import machine_info

    out = Path(args.out)

    images = load_images(Path(args.data), args.size, Path(args.cache))
    gen = torch.Generator().manual_seed(0)  # held-out subset, eval noise and text encoder are fixed; --seed varies training
    hold_idx = torch.randperm(len(images["holdout"]), generator=gen)[: args.holdout]
    hold_x = to_model_range(images["holdout"][hold_idx])
    hold_text = [images["holdout_text"][i] for i in hold_idx.tolist()]
    data = {"train": images["train"],
            "train_ctx": encode_captions(images["train_text"], width=args.context, tokens=args.tokens, seed=0),
            "hold_x": hold_x, "hold_ctx": encode_captions(hold_text, width=args.context, tokens=args.tokens, seed=0),
            "hold_noise": torch.randn(len(EVAL_TIMESTEPS), *hold_x.shape, generator=gen)}
    specs = [study_config(Path(v), args.size, args.channels, args.context) for v in args.variants]
    meta = {"study": "architecture-lab convergence (stand-in driver; rerun with `latentdiff train` on VAE latents)",
            "settings": vars(args), "machine": machine_info(),
            "data": {"summary": f"{args.size}² RGB emoji as latents, {len(images['train'])} train / {len(hold_x)} held out",
                     "train_images": len(images["train"]), "holdout_images": len(hold_x),
                     "eval_timesteps": list(EVAL_TIMESTEPS), "text": f"frozen random 2-layer CLIP, width {args.context}, "
                                                                      f"{args.tokens} tokens", "scheduler": SCHEDULER}}
    records, grids = [], {}
    for name, cfg, desc in specs:
        load_before = os.getloadavg()[0]
        record, samples = train_variant(name, cfg, data, args)
        record["description"] = desc
        record["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after: >2 = shared cores
        records.append(record)
        grids[name] = samples
        print(f"{name:16s} params {record['params'] / 1e6:5.2f}M  {record['seconds_per_step']:.3f} s/step  "
              f"held-out loss {record['final_eval_loss']:.4f}", flush=True)
        write_outputs(records, grids, hold_x[: args.samples], meta, out)  # after each variant: partial results survive
    return 0


if __name__ == "__main__":
    sys.exit(main())
