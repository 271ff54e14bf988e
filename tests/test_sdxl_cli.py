"""SDXL on the command line: info names the family, the native size, --refiner, --vae (also for SD1), one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import run
from latentdiff.checkpoints import ldm_keys as K
from latentdiff.pipelines.png_metadata import read_png_params
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

ARGS = ["--steps", "4", "--seed", "3", "--dtype", "fp32", "--guidance", "5", "--sampler", "euler"]


def test_info_names_the_family(capsys, tiny_sdxl_folder, tiny_sdxl_refiner_folder, tiny_sdxl_inpaint_folder, tiny_folder):
    for folder, name in ((tiny_sdxl_folder, "SDXL base"), (tiny_sdxl_refiner_folder, "SDXL refiner"),
                         (tiny_sdxl_inpaint_folder, "SDXL inpainting"), (tiny_folder, "SD1")):
        code, out, _ = run(capsys, "info", folder)
        assert code == 0
        assert out.splitlines()[1].split(None, 1)[1] == name
    out = run(capsys, "info", tiny_sdxl_folder)[1]
    assert "text encoder 2" in out and "pooled projection 16" in out and "scaling 0.13025" in out and "native size      64×64" in out


def test_generate_with_refiner_writes_a1111_fields(capsys, tmp_path, tiny_sdxl_folder, tiny_sdxl_refiner_folder):
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "generate", "a fox", "--model", tiny_sdxl_folder, "--refiner", tiny_sdxl_refiner_folder,
                       "--refiner-switch", "0.5", "--out", out, *ARGS)
    assert code == 0, err
    assert Image.open(out).size == (64, 64)
    p = read_png_params(out)
    assert p.extra["Refiner switch at"] == 0.5 and p.extra["Refiner"].startswith("tiny-sdxl-refiner")
    text = Image.open(out).info["parameters"]
    assert "Refiner: tiny-sdxl-refiner" in text and "Refiner switch at: 0.5" in text
    base = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")
    plain = base("a fox", num_inference_steps=4, seed=3, guidance_scale=5, sampler="euler", progress=False).images[0]
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(Image.open(out), np.int16)).max() > 2  # the refiner drew part


@pytest.mark.parametrize("switch", ["1.0", "0", "-0.2"])
def test_bad_refiner_switch_is_one_line(capsys, tmp_path, tiny_sdxl_folder, tiny_sdxl_refiner_folder, switch):
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "generate", "a fox", "--model", tiny_sdxl_folder, "--refiner", tiny_sdxl_refiner_folder,
                       "--refiner-switch", switch, "--out", out, *ARGS)
    assert code == 2 and not out.exists() and "--refiner-switch must be in (0, 1)" in err


def test_refiner_with_an_sd1_model_is_refused(capsys, tmp_path, tiny_folder, tiny_sdxl_refiner_folder):
    code, _, err = run(capsys, "generate", "a fox", "--model", tiny_folder, "--refiner", tiny_sdxl_refiner_folder,
                       "--out", tmp_path / "x.png", *ARGS)
    assert code == 2 and "not an SDXL model" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("form", ["folder", "ldm", "diffusers"])
def test_vae_swap(capsys, tmp_path, request, family, form):
    """--vae replaces the model's VAE: a diffusers vae folder, or .safetensors in A1111/LDM or diffusers names."""
    folder = request.getfixturevalue("tiny_folder" if family == "sd1" else "tiny_sdxl_folder")
    pipe = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")
    torch.manual_seed(5)
    with torch.no_grad():
        for p in pipe.vae.parameters():
            p.mul_(1.0 + 0.3 * torch.randn_like(p))
    other = tmp_path / "vae"
    if form == "folder":
        pipe.vae.save_pretrained(str(other))
    else:
        state = pipe.vae.state_dict()
        if form == "ldm":
            state = {k.removeprefix(K.VAE): v for k, v in K.to_ldm(state, K.vae_entries(K.vae_layout_from_diffusers(state)), "VAE").items()}
        other = tmp_path / "vae.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(other))
    want = pipe("a cup", num_inference_steps=4, seed=3, guidance_scale=5, sampler="euler", progress=False).images[0]
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "generate", "a cup", "--model", folder, "--vae", other, "--out", out, *ARGS)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))


def test_vae_that_does_not_fit_is_one_line(capsys, tmp_path, tiny_folder):
    bad = tmp_path / "vae.safetensors"
    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(3, 3, 3, 3)}, str(bad))
    code, _, err = run(capsys, "generate", "a cup", "--model", tiny_folder, "--vae", bad, "--out", tmp_path / "x.png", *ARGS)
    assert code == 2 and "does not fit the model's VAE" in err and len(err.strip().splitlines()) == 1
