"""The sampler works in fp32 for every model dtype: latents and scheduler noise fp32, the U-Net called in its own dtype.

The first CUDA lease found euler_a 111/255 (fp16) and 140/255 (bf16) off diffusers' fp32 image: the ancestral noise was
drawn with `randn_tensor(dtype=model_output.dtype)`, i.e. in the model's half dtype, so it was other numbers.
"""

import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_module

from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline


@pytest.fixture(scope="module")
def bf16_pipe(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="bf16")


def test_ancestral_noise_and_latents_stay_fp32_in_a_bf16_pipeline(bf16_pipe, monkeypatch):
    noise_dtypes, unet_dtypes, latent_dtypes = [], [], []
    draw = euler_a_module.randn_tensor

    def spy(*args, **kwargs):
        noise = draw(*args, **kwargs)
        noise_dtypes.append(noise.dtype)
        return noise

    monkeypatch.setattr(euler_a_module, "randn_tensor", spy)
    hook = bf16_pipe.unet.register_forward_hook(lambda m, args, out: unet_dtypes.append((args[0].dtype, out.dtype)))
    try:
        bf16_pipe("a cat", num_inference_steps=3, sampler="euler_a", seed=1, progress=False,
                  callback=lambda step, total, latents: latent_dtypes.append(latents.dtype))
    finally:
        hook.remove()
    assert noise_dtypes == [torch.float32] * 3  # one ancestral draw per step, in fp32 (was bf16)
    assert latent_dtypes == [torch.float32] * 3
    assert unet_dtypes == [(torch.bfloat16, torch.bfloat16)] * 3  # the U-Net still runs in its own dtype


def test_bf16_euler_a_draws_the_fp32_noise(bf16_pipe, tiny_folder):
    """Same seed, same noise: a bf16 euler_a image stays as close to fp32's as a deterministic sampler's does."""
    fp32 = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    diffs = {}
    for sampler in ("euler_a", "euler"):
        kw = dict(num_inference_steps=5, guidance_scale=6.0, sampler=sampler, seed=7, progress=False)
        a = np.asarray(fp32("a cat in a spacesuit", **kw).images[0]).astype(np.int16)
        b = np.asarray(bf16_pipe("a cat in a spacesuit", **kw).images[0]).astype(np.int16)
        diffs[sampler] = np.abs(a - b).max()
    assert diffs["euler_a"] <= max(2 * diffs["euler"], 8), diffs
