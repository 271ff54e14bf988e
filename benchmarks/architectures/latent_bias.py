"""Per-channel mean of generated latents against the training latents': the DC bias that shows as a colour cast.

Run:  python benchmarks/architectures/latent_bias.py MODEL LATENTS.pt [--steps 25 --guidance 7.5] [--json OUT]
MODEL is an exported folder; LATENTS.pt the unet stage's cached posteriors (runs/<name>/unet/latents.pt). Prompts are
the held-out emoji labels of data/emoji (2 images each, seeds from 0), as `latentdiff eval` draws them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentdiff.data.dataset import ImageCaptionDataset
from latentdiff.pipelines import LatentDiffusionPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("latents")
    ap.add_argument("--data", default="data/emoji")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    pipe = LatentDiffusionPipeline.from_pretrained(a.model, device="cpu", dtype="fp32")
    blob = torch.load(a.latents, weights_only=False)
    c = blob["moments"].shape[1] // 2
    train = blob["moments"][:, :c] * blob["scale"]  # (N, C, h, w) in the U-Net's (scaled) space
    held = ImageCaptionDataset(a.data, resolution=8, split="holdout", progress=False).records
    prompts = sorted({r.text for r in held})
    latents = []
    decode = pipe.decode
    pipe.decode = lambda z: (latents.append(z.detach().clone()), decode(z))[1]  # the sampler's final latents
    for i in range(0, len(prompts), 32):
        pipe(prompts[i:i + 32], num_inference_steps=a.steps, guidance_scale=a.guidance, seed=0, num_images=2, progress=False)
    gen = torch.cat(latents)
    steps, guidance, sampler = pipe.sampling_settings(a.steps, a.guidance, None)
    row = {"model": a.model, "images": len(gen), "steps": steps, "guidance": guidance, "sampler": sampler,
           "train_channel_mean": train.mean((0, 2, 3)).tolist(), "generated_channel_mean": gen.mean((0, 2, 3)).tolist(),
           "train_channel_std": train.std((0, 2, 3)).tolist(), "generated_channel_std": gen.std((0, 2, 3)).tolist()}
    row["mean_abs_bias"] = (gen.mean((0, 2, 3)) - train.mean((0, 2, 3))).abs().mean().item()
    print(json.dumps(row, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
