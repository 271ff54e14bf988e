"""A small style dataset for the LoRA demo: emoji redrawn as pencil-line sketches, captioned "<label>, sketch style".

    python -m latentdiff.training.style_demo data/emoji data/emoji-sketch --count 40

The source is any captioned image folder (the emoji set of `latentdiff data emoji`); held-out images are never
used, so the demo can show the style on subjects the LoRA did not see.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from ..errors import LatentDiffError
from .data import flatten_alpha, scan_folder

STYLE_SUFFIX = ", sketch style"


def sketch(image: Image.Image) -> Image.Image:
    """Dark outlines on white paper: grayscale edges, inverted and contrast-stretched (RGB)."""
    gray = ImageOps.grayscale(flatten_alpha(image))
    edges = gray.filter(ImageFilter.FIND_EDGES)
    lines = ImageOps.autocontrast(ImageOps.invert(edges), cutoff=2).filter(ImageFilter.MinFilter(3))  # bolder lines survive 4× downscaling
    return lines.convert("RGB")


def make_sketch_set(src: str | Path, dst: str | Path, *, count: int = 40, seed: int = 0, progress: bool = True) -> int:
    """Write `count` sketched training images with kohya .txt captions to dst; returns how many were written."""
    records, _ = scan_folder(src, progress=progress)
    train = [r for r in records if r.split == "train"]
    if not train:
        raise LatentDiffError(f"{src} has no training images")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    chosen = random.Random(seed).sample(train, min(count, len(train)))
    for i, r in enumerate(chosen):
        with Image.open(r.path) as im:
            sketch(im).save(dst / f"{i:04d}.png")
        (dst / f"{i:04d}.txt").write_text(r.text + STYLE_SUFFIX, encoding="utf-8")
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="captioned image folder (e.g. data/emoji)")
    p.add_argument("dst", help="folder to write the sketch set to")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        n = make_sketch_set(args.src, args.dst, count=args.count, seed=args.seed)
    except LatentDiffError as e:
        print(f"error: {e}")
        return 2
    print(f"{n} sketch images in {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
