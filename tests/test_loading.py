"""Folders as the world writes them load fully and draw diffusers' pixels: tokenizer forms, fp16 variants."""

import logging
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from latentdiff.checkpoints import load_components
from latentdiff.checkpoints.loader import ASSETS, load_tokenizer
from latentdiff.pipelines.samplers import make_scheduler
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

PROMPT = "a lighthouse at dusk"


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def diffusers_image(folder, scheduler_config, **kw):
    ref = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler("euler", scheduler_config)
    return ref(PROMPT, generator=torch.Generator("cpu").manual_seed(5), **kw).images[0]


def test_tokenizer_json_only_sd2_folder_draws_diffusers_pixels(tiny_folder_sd2, tiny_sd2, tmp_path):
    """transformers 5 writes tokenizer.json + tokenizer_config.json only; this folder's pads with <|endoftext|>, not
    the "!" of the SD2 tokenizer we ship, and the padded positions change the picture."""
    folder = tmp_path / "sd2-tokjson"
    shutil.copytree(tiny_folder_sd2, folder)
    shutil.rmtree(folder / "tokenizer")
    CLIPTokenizer.from_pretrained(str(ASSETS / "tokenizer"), local_files_only=True).save_pretrained(str(folder / "tokenizer"))
    assert sorted(p.name for p in (folder / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    pipe = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")
    assert pipe.components.tokenizer.pad_token == "<|endoftext|>"
    kw = dict(num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
    want = diffusers_image(folder, tiny_sd2.scheduler_config, **kw)
    got = pipe(PROMPT, sampler="euler", seed=5, progress=False, **kw).images[0]
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    bundled = diffusers_image(tiny_folder_sd2, tiny_sd2.scheduler_config, **kw)  # the same weights, "!" padding
    assert np.abs(pixels(bundled) - pixels(got)).max() > 2  # the tokenizer really matters here


def test_vocab_merges_only_folder_loads_its_own_tokenizer(tmp_path):
    """The older form (vocab.json + merges.txt, a slow tokenizer's files) is read from the folder too."""
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(ASSETS / "tokenizer" / name, folder / name)
    tok = load_tokenizer(folder, "sd2")  # the SD2 fallback would pad with "!"
    assert tok.pad_token == "<|endoftext|>"
    assert tok("a cat").input_ids == [49406, 320, 2368, 49407]


def test_folder_without_tokenizer_falls_back_with_a_notice(tmp_path, caplog):
    empty = tmp_path / "tokenizer"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        tok = load_tokenizer(empty, "sd2")
    assert tok.pad_token == "!"
    notices = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(notices) == 1 and "holds no tokenizer" in notices[0] and "bundled SD2" in notices[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_tokenizer(None, "sd1")  # asking for the bundled one says nothing
    assert not caplog.records


def test_fp16_variant_folder_loads_every_component(tiny_folder, tiny_sd1, tmp_path, capfd):
    """`save_pretrained(variant="fp16")` writes `*.fp16.safetensors` in unet/, vae/ and text_encoder/; all load,
    every weight equal to the fp16 value written, and no library log line leaks."""
    ref = StableDiffusionPipeline.from_pretrained(str(tiny_folder), safety_checker=None, local_files_only=True, dtype=torch.float16)
    folder = tmp_path / "fp16"
    ref.save_pretrained(str(folder), variant="fp16")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")) == [
        "text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors"]
    capfd.readouterr()
    loaded = load_components(folder)
    err = capfd.readouterr().err
    assert "error" not in err.lower() and "unsafe" not in err.lower(), err
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny_sd1, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(want) == set(got), name
        for key, value in want.items():
            assert torch.equal(got[key].float(), value.half().float()), f"{name}.{key}"


def test_pickled_component_needs_allow_pickle(tiny_folder, tmp_path):
    """A VAE stored only as a .bin pickle is refused without allow_pickle (diffusers would fall back to it silently)."""
    from latentdiff.errors import LatentDiffError

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_folder, folder)
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(vae)), folder / "vae" / "diffusion_pytorch_model.bin")
    vae.unlink()
    with pytest.raises(LatentDiffError, match="is a pickle; pass --allow-pickle"):
        load_components(folder)
    assert load_components(folder, allow_pickle=True).vae is not None
