"""A1111's hires fix: two passes (latent or pixel upscale, then img2img for exactly Hires steps), its PNG fields
written and replayed (ours and A1111's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.hires import HiresFix, hires_fix, second_pass_steps
from latentdiff.pipelines.png_metadata import parse_a1111, read_png_params
from latentdiff.pipelines.replay import from_a1111
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

KW = dict(num_inference_steps=3, guidance_scale=5.0, sampler="euler", seed=4, height=48, width=64, progress=False)


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


def test_second_pass_runs_exactly_hires_steps():
    for steps in range(1, 40):
        for strength in (0.2, 0.35, 0.5, 0.7, 0.75, 0.999, 1.0):
            total = second_pass_steps(steps, strength)
            assert int(total * strength) == steps, (steps, strength, total)


@pytest.mark.parametrize("upscaler", ["latent", "latent_nearest", "lanczos"])
def test_two_passes(pipe, upscaler):
    hires = HiresFix(scale=1.5, steps=2, strength=0.6, upscaler=upscaler)
    seen = []
    out = hires_fix(pipe, "a red fox", "blurry", hires=hires, callback=lambda s, n, x: seen.append((n, tuple(x.shape))), **KW)
    assert out.images[0].size == (96, 72)
    assert seen[:3] == [(3, (1, 4, 6, 8))] * 3 and seen[3:] == [(2, (1, 4, 9, 12))] * 2  # 3 base steps, then exactly 2
    p = out.params[0]
    assert (p.width, p.height) == (64, 48)  # A1111's Size is the first pass's
    assert p.extra == {"Denoising strength": 0.6, "Hires upscale": "1.5", "Hires steps": 2,
                       "Hires upscaler": {"latent": "Latent", "latent_nearest": "Latent (nearest)", "lanczos": "Lanczos"}[upscaler]}
    base = pipe("a red fox", "blurry", **KW).images[0].resize((96, 72), Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(base, dtype=int) - np.asarray(out.images[0], dtype=int)).mean()
    assert 1 < diff < 60  # redrawn, yet the same picture's composition


def test_latent_upscale_is_torch_interpolation(pipe):
    from latentdiff.pipelines.hires import upscale

    x = torch.randn(1, 4, 6, 8)
    got = upscale(pipe, x, [], HiresFix(scale=2, upscaler="Latent (nearest)"), (128, 96), [])
    assert torch.equal(got, F.interpolate(x, size=(12, 16), mode="nearest"))
    assert torch.equal(got[0, :, ::2, ::2], x[0])


def test_bad_settings_are_one_line():
    with pytest.raises(LatentDiffError, match="unknown hires upscaler 'R-ESRGAN'"):
        HiresFix(upscaler="R-ESRGAN")
    with pytest.raises(LatentDiffError, match="hires scale must be in"):
        HiresFix(scale=0.5)
    with pytest.raises(LatentDiffError, match="strength must be in"):
        HiresFix(strength=0)


def test_cli_writes_a1111_fields_and_replays(tmp_path, tiny_folder):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    args = ["--model", str(tiny_folder), "--steps", "3", "--seed", "4", "--dtype", "fp32", "--width", "64", "--height", "48"]
    assert main(["generate", "a red fox", *args, "--hires-scale", "1.5", "--hires-steps", "2", "--hires-strength", "0.6",
                 "--hires-upscaler", "lanczos", "--out", str(a)]) == 0
    _, _, kv = parse_a1111(Image.open(a).info["parameters"])
    assert {k: kv[k] for k in ("Size", "Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler")} == \
        {"Size": "64x48", "Denoising strength": "0.6", "Hires upscale": "1.5", "Hires steps": "2", "Hires upscaler": "Lanczos"}
    assert Image.open(a).size == (96, 72)
    assert main(["generate", "--replay", str(a), "--out", str(b)]) == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert read_png_params(b).extra["Hires upscaler"] == "Lanczos"


def test_a1111_text_reads_the_hires_fields():
    src = from_a1111("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.55, "
                     "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (nearest), RNG: CPU")
    assert src.notices == []
    hires = HiresFix.from_fields(src.params.extra)
    assert (hires.scale, hires.steps, hires.strength, hires.upscaler) == (2.0, 10, 0.55, "latent_nearest")
