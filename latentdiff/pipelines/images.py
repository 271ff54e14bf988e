"""Input pictures for img2img and inpainting: reading, sizing to multiples of 8, mask threshold and feathering.

Conventions (the same as diffusers' VaeImageProcessor, so results match its pipelines):
* images are RGB; transparency is composited over white (as the training data is);
* a side that is not a multiple of 8 is resized (Lanczos) to the *nearest* multiple of 8, said in one
  warning line (diffusers rounds down silently);
* masks are read as grayscale (PIL "L"); a pixel is repainted where its value/255 ≥ `threshold`
  (default 0.5, i.e. gray level ≥ 128: white repaints, black keeps); other values are kept;
* single-channel pictures beyond 8 bits are read by their value range, not clipped: 16-bit (`I;16*`, and `I`,
  which is how Pillow may open a 16-bit PNG) as 0..65535, float (`F`) as 0..1 when no value exceeds 1, else
  0..255; images become gray RGB, masks keep the full precision for the threshold;
* a mask must have the image's size (a different size is a one-line error, not a silent resize:
  a mismatched mask is usually the wrong file).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoints import file_hash
from ..errors import LatentDiffError
from ..imaging import flatten_alpha, to_tensor  # noqa: F401  (to_tensor: re-exported, one formula)

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image


@dataclass
class InputImage:
    """An RGB picture at its working size, as the VAE wants it."""

    pil: Image.Image                 # RGB, width and height multiples of 8
    tensor: torch.Tensor             # (1, 3, H, W) float32 in [-1, 1]
    sha: str                         # sha256[:10] of the file, or of the pixels for an in-memory image
    original_size: tuple[int, int]   # (width, height) as given, before any resize

    @property
    def size(self) -> tuple[int, int]:
        return self.pil.size


@dataclass
class InputMask:
    """A binary inpainting mask at the image's working size: 1 = repaint, 0 = keep."""

    tensor: torch.Tensor             # (1, 1, H, W) float32 in {0, 1}
    sha: str                         # sha256[:10] of the file, or of the pixels
    threshold: float                 # value/255 at or above which a pixel is repainted


def pixel_hash(image: Image.Image) -> str:
    """sha256[:10] over mode, size and raw pixels (for images that did not come from a file)."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:10]


def open_image(src: ImageInput, what: str = "image") -> tuple[Image.Image, str]:
    """A fully read PIL image and its hash; one-line error for a missing or unreadable file."""
    if isinstance(src, Image.Image):
        return src, pixel_hash(src)
    if not isinstance(src, (str, os.PathLike)):
        raise LatentDiffError(f"{what} must be a file path or a PIL image, got {type(src).__name__}")
    path = Path(src).expanduser()
    if not path.is_file():
        raise LatentDiffError(f"no such {what} file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise LatentDiffError(f"{path} is not a readable image") from None
    return image, file_hash(path)


def snap_size(width: int, height: int, multiple: int = 8) -> tuple[int, int]:
    """Each side rounded to the nearest positive multiple of `multiple`."""
    return tuple(max(multiple, int(v / multiple + 0.5) * multiple) for v in (width, height))  # type: ignore[return-value]


def working_size(size: tuple[int, int], width: int | None, height: int | None, multiple: int = 8) -> tuple[int, int]:
    """The size to run at: the requested width/height (multiples of 8), else the input's, snapped to multiples of 8."""
    for name, v in (("width", width), ("height", height)):
        if v is not None and (not isinstance(v, int) or v <= 0 or v % multiple):
            raise LatentDiffError(f"{name} must be a positive multiple of {multiple}, got {v}")
    if width is None and height is None:
        return snap_size(*size, multiple)
    w0, h0 = size
    if width is None:  # keep the aspect ratio from the side given
        width = snap_size(round(w0 * height / h0), 8, multiple)[0]
    if height is None:
        height = snap_size(8, round(h0 * width / w0), multiple)[1]
    return width, height


def wide_gray_values(image: Image.Image) -> np.ndarray | None:
    """(H, W) float32 in [0, 1] for 16-bit, 32-bit integer and float pictures (by value range); None for other modes."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit signed; a 16-bit PNG may open as this)
        arr = np.array(image, dtype=np.float64)  # numpy reads each byte order; (H, W)
        return (np.clip(arr, 0, 65535) / 65535).astype(np.float32)
    if image.mode == "F":
        arr = np.array(image, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise LatentDiffError("the picture holds NaN or infinite values")
        return arr.clip(0, 1) if arr.max(initial=0) <= 1 else arr.clip(0, 255) / 255
    return None


def to_8bit(image: Image.Image) -> Image.Image:
    """The picture in an 8-bit mode: wide single-channel ones scaled by their range (Pillow's convert would clip)."""
    values = wide_gray_values(image)
    if values is None:
        return image
    return Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L")


def load_image(src: ImageInput, width: int | None = None, height: int | None = None, multiple: int = 8) -> InputImage:
    """Read an input picture, flatten transparency onto white, resize to its working size (Lanczos)."""
    raw, sha = open_image(src, "image")
    image = flatten_alpha(to_8bit(raw))
    size = working_size(image.size, width, height, multiple)
    if size != image.size:
        if width is None and height is None:
            log.warning("image %dx%d resized to %dx%d (sides must be multiples of %d)", *image.size, *size, multiple)
        image = image.resize(size, resample=Image.LANCZOS)
    return InputImage(image, to_tensor(image), sha, raw.size)


def load_mask(src: ImageInput, image: InputImage, threshold: float = 0.5) -> InputMask:
    """Read a mask of the image's size, resize it with the image, and threshold it to {0, 1}."""
    if not 0.0 < threshold <= 1.0:
        raise LatentDiffError(f"mask threshold must be in (0, 1], got {threshold}")
    raw, sha = open_image(src, "mask")
    if raw.size != image.original_size:
        raise LatentDiffError(f"mask is {raw.size[0]}x{raw.size[1]} but the image is "
                              f"{image.original_size[0]}x{image.original_size[1]}; give a mask of the image's size")
    values = mask_values(raw, image.size)  # (H, W) in [0, 1]
    binary = (values >= threshold).float()[None, None]  # (1, 1, H, W)
    if not binary.any():
        raise LatentDiffError(f"the mask marks nothing to repaint (no pixel at or above {threshold:g} × 255 gray); "
                              "white = repaint, black = keep")
    return InputMask(binary, sha, threshold)


def mask_values(raw: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A mask's gray values at `size`, (H, W) float32 in [0, 1]: 8-bit modes through PIL "L" (ITU-R 601-2 luma,
    alpha ignored), 16-bit and float ones by their value range at full precision."""
    wide = wide_gray_values(raw)
    if wide is None:
        gray = raw.convert("L")
        if gray.size != size:
            gray = gray.resize(size, resample=Image.LANCZOS)
        return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
    field = Image.fromarray(wide, mode="F")
    if field.size != size:
        field = field.resize(size, resample=Image.LANCZOS)
    return torch.from_numpy(np.array(field, dtype=np.float32).clip(0, 1))


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian-blurred mask (σ = radius px, kernel cut at 3σ) for a soft overlay; (1, 1, H, W) in [0, 1]."""
    if radius < 0:
        raise LatentDiffError(f"mask blur must be ≥ 0 pixels, got {radius}")
    if radius == 0:
        return mask
    reach = math.ceil(3 * radius)
    x = torch.arange(-reach, reach + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / radius) ** 2)
    kernel = kernel / kernel.sum()
    # Zero padding: outside the picture there is nothing to repaint. Separable: rows, then columns.
    out = F.conv2d(F.pad(mask, (reach, reach, 0, 0)), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, reach, reach)), kernel.view(1, 1, -1, 1))
    return out.clamp(0, 1)


def overlay(generated: Image.Image, original: Image.Image, alpha: torch.Tensor) -> Image.Image:
    """alpha · generated + (1 − alpha) · original per pixel; where alpha is 0 the original is kept exactly."""
    a = alpha[0, 0].cpu().numpy()[..., None]  # (H, W, 1)
    gen = np.asarray(generated, dtype=np.float32)  # (H, W, 3)
    orig = np.asarray(original, dtype=np.float32)
    return Image.fromarray(np.round(a * gen + (1.0 - a) * orig).clip(0, 255).astype(np.uint8))
