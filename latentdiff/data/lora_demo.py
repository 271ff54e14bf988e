"""Small LoRA demo sets made from a captioned image folder (the emoji set of `latentdiff data emoji`).

    latentdiff data lora-demo subject data/emoji data/emoji-merman --name merman
    latentdiff data lora-demo sketch data/emoji data/emoji-sketch --count 40

* subject: every image whose caption starts with the name (e.g. the six skin tones of "merman", an emoji family
  the default model holds out and never saw), captions kept, so the LoRA teaches a new subject;
* sketch: images redrawn as pencil-line sketches, captioned "<label>, sketch style" (a style; it needs a VAE that
  can draw thin lines, so SD-class models rather than the tiny default model).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from ..data.dataset import scan_folder
from ..errors import LatentDiffError
from ..imaging import flatten_alpha

STYLE_SUFFIX = ", sketch style"


def sketch(image: Image.Image) -> Image.Image:
    """Dark outlines on white paper: grayscale edges, inverted and contrast-stretched (RGB)."""
    gray = ImageOps.grayscale(flatten_alpha(image))
    edges = gray.filter(ImageFilter.FIND_EDGES)
    lines = ImageOps.autocontrast(ImageOps.invert(edges), cutoff=2).filter(ImageFilter.MinFilter(3))  # bolder lines survive 4× downscaling
    return lines.convert("RGB")


def make_sketch_set(src: str | Path, dst: str | Path, *, count: int = 40, seed: int = 0, progress: bool = True) -> int:
    """Write `count` sketched training-split images with kohya .txt captions to dst; returns how many were written."""
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


def make_subject_set(src: str | Path, dst: str | Path, *, name: str, progress: bool = True) -> int:
    """Copy every image (any split) whose caption is `name` or starts with `name:` to dst with kohya .txt captions."""
    records, _ = scan_folder(src, progress=progress)
    chosen = [r for r in records if r.text == name or r.text.startswith(name + ":")]
    if not chosen:
        raise LatentDiffError(f"no image in {src} is captioned {name!r}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(chosen):
        shutil.copyfile(r.path, dst / f"{i:04d}{r.path.suffix}")
        (dst / f"{i:04d}.txt").write_text(r.text, encoding="utf-8")
    return len(chosen)

