"""Control images: A1111's resize modes and the model-free preprocessors, pixel by pixel on small synthetic pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.control import ControlUnit
from latentdiff.pipelines.control_images import canny, fit, preprocess, resize_mode, softedge


def square(value: int = 255, side: int = 12) -> np.ndarray:
    g = np.zeros((side, side), np.float32)
    g[3:9, 3:9] = value
    return g


def test_canny_draws_one_pixel_contour_as_opencv():
    # Checked against cv2.Canny(img, 100, 200) (opencv-python 5.1): identical on this square; on 20 random
    # 40×48 pictures of boxes, with and without noise, at most 1 pixel differed (at T-junctions).
    e = canny(square()) // 255
    want = np.zeros((12, 12), int)
    want[2, 4:8] = want[8, 3:9] = 1   # top edge outside the square, bottom inside (OpenCV's tie rule)
    want[4:8, 2] = want[3:8, 8] = 1   # left outside, right inside
    want[3, 3] = 1
    assert (e == want).all()
    assert set(np.unique(canny(square()))) == {0, 255}


def test_canny_thresholds():
    assert canny(square(30)).max() == 0          # |∇|₁ ≤ 180 (at the corners) < high 200: no strong edge, nothing kept
    assert canny(square(30), 50, 150).max() == 255
    assert canny(square(255), 2000, 3000).max() == 0
    with pytest.raises(LatentDiffError, match="0 ≤ low ≤ high"):
        canny(square(), 200, 100)


def test_softedge_is_scaled_gradient_magnitude():
    row = softedge(square())[5]
    assert row.max() == 255 and row[0] <= 1 and row[5] == row[6] == 30  # inside the square: the blur's tail
    assert (row == row[::-1]).all()                                         # symmetric about the square's middle
    assert softedge(np.full((8, 8), 77, np.float32)).max() == 0             # flat picture: no edges


def test_threshold_scribble_invert_none():
    g = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
    im = Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    px = lambda module, **kw: np.asarray(preprocess(im, module, **kw))[0, :, 0].tolist()
    assert px("none") == [0, 100, 127, 128, 200, 255]
    assert px("invert") == [255, 155, 128, 127, 55, 0]
    assert px("threshold", low=128) == [0, 0, 0, 255, 255, 255]
    assert px("scribble") == [255, 255, 255, 0, 0, 0]  # black strokes on white → white on black
    assert np.asarray(preprocess(im, "canny")).shape == (1, 6, 3)
    with pytest.raises(LatentDiffError, match="unknown control preprocessor 'openpose'.*'none'"):
        preprocess(im, "openpose")


def gradient(w: int = 8, h: int = 4) -> Image.Image:
    return Image.fromarray((np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3) * 2))


def test_resize_modes():
    crop = np.asarray(fit(gradient(), 4, 4, "Crop and Resize"))[..., 0]  # scale 1: the middle 4×4 columns
    assert crop.tolist() == [[12, 18, 24, 30], [60, 66, 72, 78], [108, 114, 120, 126], [156, 162, 168, 174]]
    fill = np.asarray(fit(gradient(), 8, 8, "fill"))[..., 0]                # fits as is, 2 rows padded above and below
    assert fill[2:6].tolist() == np.asarray(gradient())[..., 0].tolist()
    assert (fill[:2] == 93).all() and (fill[6:] == 93).all()                # the border's median
    assert fit(gradient(), 6, 6, "just").size == (6, 6)
    binary = Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8)))
    assert set(np.unique(np.asarray(fit(binary.convert("RGB"), 5, 5, "just")))) == {0, 255}  # edge maps stay two-valued
    assert resize_mode("resize_and_fill") == "fill" and resize_mode("Just Resize") == "just"
    with pytest.raises(LatentDiffError, match="unknown resize mode"):
        resize_mode("stretch")


@pytest.mark.parametrize("kw,message", [(dict(start=0.5, end=0.5), "0 ≤ start < end ≤ 1"), (dict(weight=float("nan")), "weight"),
                                        (dict(module="depth"), "unknown control preprocessor")])
def test_bad_units_are_one_line_errors(kw, message):
    with pytest.raises(LatentDiffError, match=message):
        ControlUnit("cn", "img.png", **kw).check()
