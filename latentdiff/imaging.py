"""Image helpers that inference and training share; imports nothing of ours (the low layer)."""

from __future__ import annotations

from PIL import Image

WHITE = (255, 255, 255)


def flatten_alpha(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """RGB image with any transparency composited over a solid background colour."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")
