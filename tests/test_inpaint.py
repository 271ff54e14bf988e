"""Inpainting: parity with diffusers' StableDiffusionInpaintPipeline (9-channel U-Net and latent blending), the kept
region, mask threshold and feather, PNG parameters, single-file 9-channel models, bad input."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_components
from latentdiff.checkpoints import load_components, save_diffusers_folder
from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.images import feather, load_image, load_mask, overlay
from latentdiff.pipelines.png_metadata import read_png_params
from latentdiff.pipelines.samplers import make_scheduler
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

STEPS = 4
TOL = 2  # 8-bit levels, per pixel
SIZE = 32


def noise_picture(w: int = SIZE, h: int = SIZE, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(w: int = SIZE, h: int = SIZE, box=(8, 4, 24, 20), value: int = 255) -> Image.Image:
    """Black picture with a rectangle (x0, y0, x1, y1) of `value`."""
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return Image.fromarray(m)


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=int)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size
    return int(np.abs(pixels(a) - pixels(b)).max())


def reference(folder):
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline.from_pretrained(str(folder), safety_checker=None, local_files_only=True)


@pytest.fixture(scope="module")
def folder9(tmp_path_factory):
    """A tiny SD1-layout inpainting model (U-Net with 9 input channels) as a diffusers folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny-inpaint"
    return save_diffusers_folder(tiny_components("sd1", seed=2, in_channels=9), folder)


@pytest.fixture(scope="module")
def concat(folder9):
    return LatentDiffusionPipeline.from_pretrained(folder9, device="cpu", dtype="fp32"), reference(folder9)


@pytest.fixture(scope="module")
def blend(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, device="cpu", dtype="fp32"), reference(tiny_folder)


def run_both(ours, ref, sampler: str, strength: float, seed: int = 3):
    image, mask = noise_picture(), box_mask()
    ref.scheduler = make_scheduler(sampler, ours.components.scheduler_config)
    theirs = ref("a red cube", image=image, mask_image=mask, height=SIZE, width=SIZE, strength=strength,
                 num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    mine = ours.inpaint("a red cube", image, mask, strength=strength, num_inference_steps=STEPS, guidance_scale=7.5,
                        sampler=sampler, seed=seed, overlay_original=False, progress=False)
    return theirs, mine


@pytest.mark.parametrize("sampler,strength", [("ddim", 1.0), ("euler_a", 1.0), ("dpmpp_2m", 0.75)])
def test_nine_channel_unet_matches_diffusers(concat, sampler, strength):
    theirs, mine = run_both(*concat, sampler, strength)
    assert max_diff(theirs, mine.images[0]) <= TOL
    assert mine.params[0].extra["Inpainting"] == "9-channel U-Net"


@pytest.mark.parametrize("sampler,strength", [("ddim", 1.0), ("euler_a", 0.75), ("dpmpp_2m", 1.0)])
def test_latent_blending_matches_diffusers(blend, sampler, strength):
    theirs, mine = run_both(*blend, sampler, strength)
    assert max_diff(theirs, mine.images[0]) <= TOL
    assert mine.params[0].extra["Inpainting"] == "latent blending"


def test_overlay_keeps_unmasked_pixels_exactly(concat):
    ours, _ = concat
    image, mask = noise_picture(), box_mask()
    kw = dict(num_inference_steps=STEPS, sampler="ddim", seed=4, progress=False)
    raw = ours.inpaint("a red cube", image, mask, overlay_original=False, **kw).images[0]
    kept = ours.inpaint("a red cube", image, mask, **kw).images[0]
    inside = pixels(mask) > 0
    assert np.array_equal(pixels(kept)[~inside], pixels(image)[~inside])  # unmasked: the input, bit for bit
    assert np.array_equal(pixels(kept)[inside], pixels(raw)[inside])      # masked: the model's output
    assert max_diff(raw, image) > 20


def test_feather_blends_only_near_the_mask_edge():
    mask = load_mask(box_mask(), load_image(noise_picture())).tensor  # (1, 1, 32, 32)
    alpha = feather(mask, 1.5)
    assert torch.equal(feather(mask, 0), mask)
    assert alpha[0, 0, 12, 16] > 0.999 and alpha[0, 0, 30, 30] == 0.0  # deep inside; beyond 3σ outside
    assert 0.3 < alpha[0, 0, 12, 8] < 0.7 and 0.0 < alpha[0, 0, 12, 6] < 0.2  # on the edge; just outside
    white, black = Image.new("RGB", (SIZE, SIZE), "white"), Image.new("RGB", (SIZE, SIZE), "black")
    out = pixels(overlay(white, black, alpha))[..., 0]
    assert out[30, 30] == 0 and out[12, 16] == 255 and 80 < out[12, 8] < 180


def test_mask_threshold_and_gray_levels():
    init = load_image(noise_picture())
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[:, :8], m[:, 8:16], m[:, 16:24] = 127, 128, 255
    default = load_mask(Image.fromarray(m), init).tensor[0, 0]
    assert default[:, :8].sum() == 0 and default[:, 8:24].sum() == SIZE * 16 and default[:, 24:].sum() == 0  # 128 up
    low = load_mask(Image.fromarray(m), init, threshold=0.25).tensor[0, 0]
    assert low[:, :24].sum() == SIZE * 24 and low[:, 24:].sum() == 0
    rgb = load_mask(Image.fromarray(m).convert("RGB"), init).tensor
    assert torch.equal(rgb[0, 0], default)


def test_params_record_hashes_and_mask_settings(concat, tmp_path):
    ours, _ = concat
    src, msk = tmp_path / "in.png", tmp_path / "mask.png"
    noise_picture().save(src)
    box_mask().save(msk)
    out = ours.inpaint("x", src, msk, strength=0.5, mask_blur=1.5, num_inference_steps=STEPS, sampler="ddim", seed=2,
                       progress=False)
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:10]  # noqa: E731
    assert out.params[0].extra == {"Denoising strength": 0.5, "Init image hash": sha(src), "Mask hash": sha(msk),
                                   "Mask threshold": 0.5, "Mask blur": 1.5, "Overlay original": True,
                                   "Inpainting": "9-channel U-Net"}


def test_cli_inpaint_resizes_and_writes_png(folder9, tmp_path, caplog):
    src, msk, out = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "out.png"
    noise_picture(30, 35).save(src)
    box_mask(30, 35).save(msk)
    with caplog.at_level(logging.WARNING):
        code = main(["inpaint", "a red cube", "--image", str(src), "--mask", str(msk), "--model", str(folder9),
                     "--steps", "2", "--seed", "7", "--dtype", "fp32", "--sampler", "euler", "--mask-blur", "1",
                     "--out", str(out)])
    assert code == 0
    assert "image 30x35 resized to 32x32 (sides must be multiples of 8)" in caplog.messages
    p = read_png_params(out)
    assert (p.width, p.height, p.seed, p.sampler) == (32, 32, 7, "euler")
    assert p.extra["Mask hash"] == hashlib.sha256(msk.read_bytes()).hexdigest()[:10] and p.extra["Mask blur"] == 1.0
    assert Image.open(out).size == (32, 32)
    again = tmp_path / "again.png"
    assert main(["inpaint", "--image", str(src), "--mask", str(msk), "--replay", str(out), "--dtype", "fp32",
                 "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    assert read_png_params(again).extra == p.extra
    box_mask(30, 35, box=(2, 2, 10, 10)).save(msk)  # another mask of the same size
    assert main(["inpaint", "--image", str(src), "--mask", str(msk), "--replay", str(out), "--out", str(again)]) == 2
    assert main(["img2img", "--image", str(src), "--replay", str(out), "--out", str(again)]) == 2


def test_single_file_inpainting_model_round_trips(tmp_path):
    """A 9-channel model written as one LDM .safetensors is detected from conv_in and inpaints identically."""
    from latentdiff.checkpoints.single_file import write_single_file

    c = tiny_components("sd1", seed=5, in_channels=9)
    unet_config = {k: v for k, v in c.unet.config.to_diffusers().items() if k != "in_channels"}  # conv_in must tell
    configs = {"unet": unet_config, "vae": dict(c.vae.config), "text_encoder": c.text_encoder.config.to_dict(),
               "scheduler": dict(c.scheduler_config)}
    path = write_single_file(tmp_path / "inpaint.safetensors", kind="sd1", unet_state=c.unet.state_dict(),
                             vae_state=c.vae.state_dict(), text_state=c.text_encoder.state_dict(), configs=configs)
    loaded = load_components(path)
    assert loaded.unet.config.in_channels == 9 and loaded.single_file
    kw = dict(num_inference_steps=2, sampler="ddim", seed=1, progress=False)
    a = LatentDiffusionPipeline(c, device="cpu", dtype="fp32").inpaint("x", noise_picture(), box_mask(), **kw)
    b = LatentDiffusionPipeline(loaded, device="cpu", dtype="fp32").inpaint("x", noise_picture(), box_mask(), **kw)
    assert max_diff(a.images[0], b.images[0]) == 0


# ---------------------------------------------------------------- bad input


def test_mask_of_another_size_is_one_line_error(concat):
    with pytest.raises(LatentDiffError, match="mask is 16x16 but the image is 32x32; give a mask of the image's size"):
        concat[0].inpaint("x", noise_picture(), box_mask(16, 16, (0, 0, 8, 8)), progress=False)


def test_empty_and_unreadable_masks(concat, tmp_path):
    with pytest.raises(LatentDiffError, match="the mask marks nothing to repaint"):
        concat[0].inpaint("x", noise_picture(), box_mask(value=127), progress=False)
    bad = tmp_path / "mask.png"
    bad.write_text("not an image")
    with pytest.raises(LatentDiffError, match="mask.png is not a readable image"):
        concat[0].inpaint("x", noise_picture(), bad, progress=False)


@pytest.mark.parametrize("kwargs,message", [
    ({"strength": 0.0}, r"strength must be in \(0, 1\]"),
    ({"strength": 1.01}, r"strength must be in \(0, 1\]"),
    ({"mask_threshold": 0.0}, r"mask threshold must be in \(0, 1\]"),
    ({"mask_blur": -1.0}, "mask blur must be ≥ 0"),
    ({"mask_blur": 2.0, "overlay_original": False}, "no effect with the overlay off"),
])
def test_bad_settings(concat, kwargs, message):
    with pytest.raises(LatentDiffError, match=message):
        concat[0].inpaint("x", noise_picture(), box_mask(), progress=False, **kwargs)


def test_unet_with_other_channel_count_is_refused():
    pipe = LatentDiffusionPipeline(tiny_components("sd1", in_channels=5), device="cpu", dtype="fp32")
    with pytest.raises(LatentDiffError, match="needs a U-Net with 4 .* or 9 .* input channels; this one has 5"):
        pipe.inpaint("x", noise_picture(), box_mask(), progress=False)


def test_cli_checks_mask_before_loading_a_model(tmp_path, capsys):
    src, msk = tmp_path / "in.png", tmp_path / "mask.png"
    noise_picture().save(src)
    box_mask(24, 24, (0, 0, 8, 8)).save(msk)
    assert main(["inpaint", "x", "--image", str(src), "--mask", str(msk), "--model", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == "error: mask is 24x24 but the image is 32x32; give a mask of the image's size"
