"""Few-step models: the `lcm` sampler and trailing-spacing Euler (Turbo/Lightning) equal diffusers' pipelines on the tiny
random model; an LCM-LoRA-shaped kohya file with 3×3 conv layers loads like any LoRA and matches diffusers; guidance ≤ 1
runs the U-Net on the conditional half only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

PROMPT = "a cat in a spacesuit"
KW = dict(num_inference_steps=4, height=64, width=64)


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def ref(tiny_folder):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_folder), safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


def draw_ref(ref, scheduler, guidance=1.0, seed=5):
    ref.scheduler = scheduler
    return ref(PROMPT, guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed), **KW).images[0]


def test_lcm_sampler_matches_diffusers_lcm_scheduler(ref, ours, tiny_sd1):
    want = draw_ref(ref, LCMScheduler.from_config(tiny_sd1.scheduler_config))
    got = ours(PROMPT, sampler="lcm", guidance_scale=1.0, seed=5, progress=False, **KW)
    assert np.abs(pixels(want) - pixels(got.images[0])).max() <= 2
    assert pixels(got.images[0]).std() > 5 and got.params[0].sampler == "lcm"


def test_trailing_euler_matches_diffusers_turbo_setup(ref, ours, tiny_sd1):
    want = draw_ref(ref, EulerDiscreteScheduler.from_config(tiny_sd1.scheduler_config, timestep_spacing="trailing"))
    got = ours(PROMPT, sampler="euler", schedule="sgm_uniform", guidance_scale=0.0, seed=5, progress=False, **KW).images[0]
    assert np.abs(pixels(want) - pixels(got)).max() <= 2


@pytest.mark.parametrize("guidance,batch,encoded", [(1.0, 1, 1), (0.0, 1, 1), (0.5, 1, 1), (1.5, 2, 2)])
def test_guidance_at_most_one_skips_the_unconditional_half(ours, guidance, batch, encoded):
    seen, texts = [], []
    hook = ours.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    encode = ours.encode_text
    ours.encode_text = lambda prompts, negatives, guided, clip_skip=0: texts.append(len(negatives + prompts if guided else prompts)) or encode(prompts, negatives, guided, clip_skip)
    try:
        ours(PROMPT, "blurry", sampler="lcm", guidance_scale=guidance, seed=1, num_inference_steps=2, progress=False)
    finally:
        hook.remove()
        del ours.encode_text
    assert seen == [batch, batch] and texts == [encoded]


def lcm_lora_file(path, unet, rank=4, alpha=4.0, seed=0):
    """A kohya-layout file shaped like the published LCM-LoRAs: resnet 3×3 convs, time embeddings, shortcuts, samplers,
    attention projections (lora_unet_… names, 3×3 lora_down with a 1×1 lora_up)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, m in unet.named_modules():
        if not name.endswith(("conv1", "conv2", "time_emb_proj", "conv_shortcut", "samplers.0.conv", "to_q", "to_v", "proj_in")):
            continue
        if isinstance(m, torch.nn.Conv2d):
            down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=g) * 0.05
            up = torch.randn(m.out_channels, rank, 1, 1, generator=g) * 0.05
        else:
            down = torch.randn(rank, m.in_features, generator=g) * 0.1
            up = torch.randn(m.out_features, rank, generator=g) * 0.1
        key = "lora_unet_" + name.replace(".", "_")
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path, sum(1 for k in tensors if k.endswith("lora_down.weight") and tensors[k].ndim == 4 and tensors[k].shape[-1] == 3)


def test_lcm_lora_with_convs_matches_diffusers(tiny_folder, tiny_sd1, tmp_path):
    path, convs3 = lcm_lora_file(tmp_path / "lcm-lora.safetensors", tiny_sd1.unet)
    assert convs3 >= 10  # resnet and sampler convs are 3×3 LoRAs
    ref = StableDiffusionPipeline.from_pretrained(str(tiny_folder), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path))
    want = draw_ref(ref, LCMScheduler.from_config(tiny_sd1.scheduler_config))
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    base = pipe(PROMPT, sampler="lcm", guidance_scale=1.0, seed=5, progress=False, **KW).images[0]
    pipe.load_lora(path)
    got = pipe(PROMPT, sampler="lcm", guidance_scale=1.0, seed=5, progress=False, **KW).images[0]
    assert np.abs(pixels(want) - pixels(got)).max() <= 2
    assert np.abs(pixels(base) - pixels(got)).mean() > 1  # the LoRA changed the picture
