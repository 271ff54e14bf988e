"""SDXL through our pipeline draws diffusers' StableDiffusionXL*Pipeline pixels from the same folder, seed and sampler."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from latentdiff import LatentDiffusionPipeline
from latentdiff.pipelines.samplers import make_scheduler


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_close(ours, theirs, max_levels=2):
    d = np.abs(pixels(ours) - pixels(theirs))
    assert d.max() <= max_levels, (d.max(), d.mean())
    assert pixels(ours).std() > 5  # a lively picture, not a flat one


def reference(cls, folder, components, sampler, **kw):
    ref = cls.from_pretrained(str(folder), local_files_only=True, add_watermarker=False, **kw)
    ref.scheduler = make_scheduler(sampler, components.scheduler_config)
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.fixture(scope="module")
def xl(tiny_sdxl_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, device="cpu", dtype="fp32")


@pytest.mark.parametrize("sampler,negative", [("euler", ""), ("dpmpp_2m", "blurry"), ("euler_a", "")])
def test_txt2img_matches_diffusers(xl, tiny_sdxl_folder, tiny_sdxl, sampler, negative):
    ref = reference(StableDiffusionXLPipeline, tiny_sdxl_folder, tiny_sdxl, sampler)
    want = ref("a red fox in snow", negative_prompt=negative or None, num_inference_steps=4, guidance_scale=5.0,
               generator=[torch.Generator().manual_seed(7)], height=64, width=64).images[0]
    got = xl("a red fox in snow", negative_prompt=negative, num_inference_steps=4, guidance_scale=5.0, sampler=sampler,
             seed=7, progress=False)
    assert got.images[0].size == (64, 64)  # the native size: sample_size × 8
    assert_close(got.images[0], want)


def test_micro_conditioning_and_no_guidance_match_diffusers(xl, tiny_sdxl_folder, tiny_sdxl):
    ref = reference(StableDiffusionXLPipeline, tiny_sdxl_folder, tiny_sdxl, "euler")
    kw = dict(original_size=(512, 384), crops_coords_top_left=(16, 8), target_size=(64, 64))
    want = ref("a cat", num_inference_steps=3, guidance_scale=1.0, generator=[torch.Generator().manual_seed(3)],
               height=64, width=64, **kw).images[0]
    got = xl("a cat", num_inference_steps=3, guidance_scale=1.0, sampler="euler", seed=3, progress=False,
             micro_conditioning=kw).images[0]
    assert_close(got, want)
    plain = xl("a cat", num_inference_steps=3, guidance_scale=1.0, sampler="euler", seed=3, progress=False).images[0]
    assert np.abs(pixels(plain) - pixels(got)).max() > 2  # the numbers reach the picture
