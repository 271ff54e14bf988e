"""The sample grid of the README and the model card: held-out and everyday prompts drawn by the embedded model.

Run:  python benchmarks/default_model/grid.py [--out docs/images/default-grid.png]
Uses the model's sampling defaults (its generation_config.json, as `generate` does) and seeds 0..N-1; writes a labelled PNG grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from latentdiff.pipelines import LatentDiffusionPipeline

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a cat in a spacesuit", "cat face", "astronaut", "grinning face", "red apple", "rocket",
           "pizza", "dog face", "red heart", "sun", "house", "frog"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "latentdiff" / "assets" / "default"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "default-grid.png"))
    ap.add_argument("--per-prompt", type=int, default=3)
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of each 64² tile for viewing")
    args = ap.parse_args()
    pipe = LatentDiffusionPipeline.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    out = pipe(PROMPTS, seed=0, num_images=args.per_prompt,
               progress=False)
    side = out.images[0].width * args.scale
    label_w = 150
    grid = Image.new("RGB", (label_w + side * args.per_prompt, side * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    for i, prompt in enumerate(PROMPTS):
        draw.text((6, i * side + side // 2 - 6), prompt, fill=(0, 0, 0))
        for j in range(args.per_prompt):
            im = out.images[i * args.per_prompt + j].resize((side, side), Image.Resampling.NEAREST)
            grid.paste(im, (label_w + j * side, i * side))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
