"""Control images: A1111's resize modes and the preprocessors that need no downloaded model.

Preprocessors ("modules", as sd-webui-controlnet names them), each RGB uint8 (H, W, 3) → RGB uint8 (H, W, 3):
* none: the image as given (an edge, pose, depth or normal map made elsewhere);
* invert: 255 − value (a black-on-white drawing becomes white-on-black, as ControlNets want);
* canny: Canny's edge detector (Canny 1986, https://doi.org/10.1109/TPAMI.1986.4767851) with OpenCV's conventions:
  no pre-blur, 3×3 Sobel, L1 magnitude, non-maximum suppression, hysteresis between low and high thresholds;
* softedge: Sobel gradient magnitude (L2) of the Gaussian-blurred (σ = 1) gray image, scaled so its maximum is 255;
* threshold: gray ≥ low threshold → 255, else 0;
* scribble: a black-on-white drawing → white lines on black (invert, then threshold at 128).
Pose (OpenPose) and depth (MiDaS) estimators need weights we do not ship: give their maps as images with "none".
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from ..errors import LatentDiffError

RESIZE_MODES = {"just": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}  # short name → A1111's
MODULES = ("none", "invert", "canny", "softedge", "threshold", "scribble")


def resize_mode(name: str) -> str:
    """Our short name (just/crop/fill) for a short or A1111 name ("Crop and Resize", "crop_resize", ...)."""
    key = str(name).strip().lower().replace("_", " ")
    for short, long in RESIZE_MODES.items():
        if key in (short, long.lower(), f"{short} resize", f"{short} and resize", f"resize and {short}"):
            return short
    raise LatentDiffError(f"unknown resize mode {name!r}; choose one of {', '.join(RESIZE_MODES)}")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Area-average when shrinking, Lanczos when enlarging; a black-and-white map stays two-valued (nearest)."""
    if image.size == size:
        return image
    if set(np.unique(np.asarray(image))) <= {0, 255}:
        return image.resize(size, Image.Resampling.NEAREST)
    shrink = size[0] * size[1] < image.size[0] * image.size[1]
    return image.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)


def fit(image: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """The control image at width×height by A1111's resize modes (RGB in, RGB out).

    just: stretch to the size; crop: scale to cover the size, then cut the middle; fill: scale to fit inside,
    then pad the rest with the median color of the scaled image's border.
    """
    mode = resize_mode(mode)
    w0, h0 = image.size
    if mode == "just":
        return _resize(image, (width, height))
    k = (max if mode == "crop" else min)(width / w0, height / h0)
    nw, nh = max(1, round(w0 * k)), max(1, round(h0 * k))
    scaled = _resize(image, (nw, nh))
    if mode == "crop":
        left, top = (nw - width) // 2, (nh - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    arr = np.asarray(scaled)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])  # (N, 3)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = arr
    return Image.fromarray(out)


def _sobel(gray: np.ndarray, border: str = "mirror") -> tuple[np.ndarray, np.ndarray]:
    """3×3 Sobel derivatives (x right, y down) of (H, W) float32, borders reflected as OpenCV's BORDER_REFLECT_101."""
    from scipy import ndimage

    return ndimage.sobel(gray, axis=1, mode=border), ndimage.sobel(gray, axis=0, mode=border)


def canny(gray: np.ndarray, low: float = 100, high: float = 200) -> np.ndarray:
    """Edges of (H, W) gray values 0..255 → (H, W) uint8 in {0, 255}, one pixel wide."""
    from scipy import ndimage

    if not 0 <= low <= high:
        raise LatentDiffError(f"canny thresholds must satisfy 0 ≤ low ≤ high, got {low:g} and {high:g}")
    gx, gy = _sobel(gray.astype(np.float32), "nearest")  # OpenCV's Canny replicates the border
    mag = np.abs(gx) + np.abs(gy)
    p = np.pad(mag, 1)  # neighbours outside the image count as 0
    h, w = mag.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = np.abs(gx), np.abs(gy)
    tan22, tan67 = np.tan(np.pi / 8), np.tan(3 * np.pi / 8)
    horizontal, vertical = ay <= ax * tan22, ay >= ax * tan67
    same_sign = gx * gy > 0
    # a maximum beats the neighbour before it along the gradient and at least ties the one after (OpenCV's rule)
    keep = np.where(horizontal, (mag > at(0, -1)) & (mag >= at(0, 1)),
           np.where(vertical, (mag > at(-1, 0)) & (mag >= at(1, 0)),
           np.where(same_sign, (mag > at(-1, -1)) & (mag >= at(1, 1)), (mag > at(-1, 1)) & (mag >= at(1, -1)))))
    candidate = keep & (mag > low)
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3)))
    strong = np.zeros(n + 1, bool)
    strong[np.unique(labels[candidate & (mag > high)])] = True
    strong[0] = False
    return np.where(strong[labels], 255, 0).astype(np.uint8)


def softedge(gray: np.ndarray) -> np.ndarray:
    """Soft edges: blurred-gradient magnitude of (H, W) gray values, max scaled to 255 → (H, W) uint8."""
    from scipy import ndimage

    gx, gy = _sobel(ndimage.gaussian_filter(gray.astype(np.float32), 1.0, mode="mirror"))
    mag = np.hypot(gx, gy)
    top = mag.max()
    return np.zeros(gray.shape, np.uint8) if top == 0 else np.round(mag * (255 / top)).astype(np.uint8)


def preprocess(image: Image.Image, module: str = "none", low: float = 100, high: float = 200) -> Image.Image:
    """Apply a preprocessor (see the module docstring) to an RGB image; `low`/`high` are canny's thresholds, and
    `low` is threshold's cut (gray 0..255)."""
    rgb = np.asarray(image.convert("RGB"))
    gray = np.asarray(image.convert("L"), dtype=np.float32)  # ITU-R 601-2 luma
    if module == "none":
        out = rgb
    elif module == "invert":
        out = 255 - rgb
    elif module == "canny":
        out = canny(gray, low, high)
    elif module == "softedge":
        out = softedge(gray)
    elif module == "threshold":
        out = np.where(gray >= low, 255, 0).astype(np.uint8)
    elif module == "scribble":
        out = np.where(255 - gray >= 128, 255, 0).astype(np.uint8)
    else:
        raise LatentDiffError(f"unknown control preprocessor {module!r}; choose one of {', '.join(MODULES)} "
                              "(pose and depth maps: give the map itself with 'none')")
    return Image.fromarray(np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out)
