"""Image helpers that inference, training and evaluation share; imports nothing of ours (the low layer)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

WHITE = (255, 255, 255)


def flatten_alpha(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """RGB image with any transparency composited over a solid background colour."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → (1, 3, H, W) float32 in [-1, 1] (as diffusers' VaeImageProcessor.preprocess)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0


def to_unit(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size → (N, 3, H, W) float32 in [0, 1]."""
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in images])


def grid(images: torch.Tensor, cols: int) -> Image.Image:
    """Images in [0, 1] (N, 3, H, W) → one RGB image, `cols` per row, white where a row is short."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = torch.ones(3, rows * h, cols * w)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return Image.fromarray((canvas.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
