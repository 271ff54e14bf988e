"""Pictures beyond 8-bit RGB enter img2img and inpainting by their value range, not clipped (16-bit, int, float,
palette with transparency, gray + alpha)."""

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.images import load_image, load_mask

# Top half 3/4 gray, bottom half 1/4 gray, in each mode's own range.
HIGH, LOW = 0.75, 0.25
EXPECT_TOP, EXPECT_BOTTOM = round(HIGH * 255) / 255 * 2 - 1, round(LOW * 255) / 255 * 2 - 1  # 0.498, -0.498


def halves(high: float, low: float, dtype) -> np.ndarray:
    arr = np.full((16, 24), low, dtype=np.float64)
    arr[:8] = high
    return arr.astype(dtype)


def sixteen_bit_png(tmp_path, high=HIGH, low=LOW) -> str:
    path = tmp_path / "gray16.png"
    Image.fromarray(np.round(halves(high, low, np.float64) * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"  # how Pillow opens a 16-bit grayscale PNG
    return str(path)


def pictures(tmp_path) -> dict[str, object]:
    a16 = np.round(halves(HIGH, LOW, np.float64) * 65535)
    return {
        "I;16 png": sixteen_bit_png(tmp_path),
        "I;16B": Image.frombytes("I;16B", (24, 16), a16.astype(">u2").tobytes()),
        "I": Image.fromarray(a16.astype(np.int32)),
        "F 0..1": Image.fromarray(halves(HIGH, LOW, np.float32)),
        "F 0..255": Image.fromarray(halves(HIGH * 255, LOW * 255, np.float32)),
    }


@pytest.mark.parametrize("name", ["I;16 png", "I;16B", "I", "F 0..1", "F 0..255"])
def test_wide_modes_enter_as_their_gray_level(tmp_path, name):
    image = load_image(pictures(tmp_path)[name])
    t = image.tensor
    assert t.shape == (1, 3, 16, 24)
    assert torch.allclose(t[0, :, :8], torch.full((3, 8, 24), EXPECT_TOP), atol=1e-6), t[0, :, 0, 0]
    assert torch.allclose(t[0, :, 8:], torch.full((3, 8, 24), EXPECT_BOTTOM), atol=1e-6), t[0, :, -1, 0]


@pytest.mark.parametrize("name", ["I;16 png", "I;16B", "I", "F 0..1", "F 0..255"])
def test_wide_mode_masks_threshold_by_range(tmp_path, name):
    """3/4 gray repaints, 1/4 gray keeps; the old code clipped 16-bit values to white (everything repainted)."""
    src = pictures(tmp_path)[name]
    image = load_image(Image.new("RGB", (24, 16), (9, 9, 9)))
    mask = load_mask(src, image).tensor
    assert mask.shape == (1, 1, 16, 24)
    assert mask[0, 0, :8].eq(1).all() and mask[0, 0, 8:].eq(0).all()


def test_dark_sixteen_bit_mask_is_dark(tmp_path):
    """A 16-bit mask whose brightest pixel is 40% gray marks nothing: a one-line error, not 'all white'."""
    image = load_image(Image.new("RGB", (24, 16)))
    with pytest.raises(LatentDiffError, match="marks nothing to repaint"):
        load_mask(sixteen_bit_png(tmp_path, high=0.4, low=0.1), image)
    assert load_mask(sixteen_bit_png(tmp_path, high=0.4, low=0.1), image, threshold=0.3).tensor[0, 0, :8].eq(1).all()


def test_sixteen_bit_mask_keeps_precision_at_the_threshold(tmp_path):
    """32767/65535 is just under one half and 32768/65535 just over: 8-bit rounding would put both at 128."""
    arr = np.full((16, 24), 32767, np.uint16)
    arr[:8] = 32768
    path = tmp_path / "edge.png"
    Image.fromarray(arr).save(path)
    mask = load_mask(str(path), load_image(Image.new("RGB", (24, 16)))).tensor
    assert mask[0, 0, :8].eq(1).all() and mask[0, 0, 8:].eq(0).all()


def test_palette_with_transparency_and_gray_alpha_composite_over_white(tmp_path):
    index = np.zeros((16, 24), np.uint8)
    index[:8] = 1
    pal = Image.fromarray(index, mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png")
    t = load_image(str(tmp_path / "p.png")).tensor
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([200, 100, 50]) / 255 * 2 - 1, atol=1e-6)  # opaque entry as is
    assert torch.equal(t[0, :, -1, 0], torch.ones(3))  # the transparent entry is white, not its (10, 20, 30)
    la = np.stack([np.full((16, 24), 200, np.uint8), np.full((16, 24), 128, np.uint8)], axis=-1)  # gray 200 at alpha 128
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    t = load_image(str(tmp_path / "la.png")).tensor
    want = (200 * 128 + 255 * 127) / 255  # over white, in Pillow's 8-bit compositing
    assert torch.allclose(t[0, :, 0, 0], torch.full((3,), round(want) / 255 * 2 - 1), atol=1 / 255)


def test_float_picture_with_nan_is_refused():
    arr = halves(HIGH, LOW, np.float32)
    arr[0, 0] = np.nan
    with pytest.raises(LatentDiffError, match="NaN"):
        load_image(Image.fromarray(arr))
