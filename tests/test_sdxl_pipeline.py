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


def picture(seed: int = 0, size: int = 64):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, size // 8, size // 8, generator=g)
    arr = torch.nn.functional.interpolate(base[None], size=(size, size), mode="bilinear")[0]
    return Image.fromarray((arr.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def mask(size: int = 64):
    from PIL import Image

    m = np.zeros((size, size), np.uint8)
    m[16:48, 8:40] = 255
    return Image.fromarray(m)


def test_img2img_matches_diffusers(xl, tiny_sdxl_folder, tiny_sdxl):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    ref = reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl_folder, tiny_sdxl, "dpmpp_2m")
    want = ref("a lighthouse", image=picture(), strength=0.6, num_inference_steps=5, guidance_scale=6.0,
               generator=[torch.Generator().manual_seed(11)]).images[0]
    got = xl.img2img("a lighthouse", picture(), strength=0.6, num_inference_steps=5, guidance_scale=6.0, sampler="dpmpp_2m",
                     seed=11, progress=False).images[0]
    assert_close(got, want)


@pytest.mark.parametrize("which", ["sdxl", "sdxl_inpaint"])
def test_inpaint_matches_diffusers(which, request, tiny_sdxl_folder, tiny_sdxl_inpaint_folder):
    """4-channel (latent blending) and 9-channel SDXL inpainting against StableDiffusionXLInpaintPipeline."""
    from diffusers import StableDiffusionXLInpaintPipeline

    folder = tiny_sdxl_folder if which == "sdxl" else tiny_sdxl_inpaint_folder
    components = request.getfixturevalue("tiny_sdxl" if which == "sdxl" else "tiny_sdxl_inpaint")
    ref = reference(StableDiffusionXLInpaintPipeline, folder, components, "euler")
    want = ref("a boat", image=picture(1), mask_image=mask(), strength=1.0, num_inference_steps=4, guidance_scale=5.0,
               generator=[torch.Generator().manual_seed(5)], height=64, width=64).images[0]
    pipe = LatentDiffusionPipeline.from_pretrained(folder, device="cpu", dtype="fp32")
    assert pipe.components.kind == which
    got = pipe.inpaint("a boat", picture(1), mask(), strength=1.0, num_inference_steps=4, guidance_scale=5.0, sampler="euler",
                       seed=5, overlay_original=False, progress=False).images[0]
    assert_close(got, want)


@pytest.mark.parametrize("sampler", ["euler", "euler_a"])
def test_refiner_hand_off_matches_diffusers(xl, tiny_sdxl_folder, tiny_sdxl_refiner_folder, tiny_sdxl, sampler):
    """Base to 0.75 of the schedule, the refiner (bigG only, aesthetic score) for the rest: diffusers' denoising_end/start."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    base = reference(StableDiffusionXLPipeline, tiny_sdxl_folder, tiny_sdxl, sampler)
    ref_refiner = reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl_refiner_folder, tiny_sdxl, sampler)
    gens = [torch.Generator().manual_seed(21)]
    latents = base("an old map", num_inference_steps=8, guidance_scale=5.0, denoising_end=0.75, output_type="latent",
                   generator=gens, height=64, width=64).images
    want = ref_refiner("an old map", image=latents, num_inference_steps=8, guidance_scale=5.0, denoising_start=0.75,
                       generator=gens).images[0]
    refiner = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_refiner_folder, device="cpu", dtype="fp32")
    assert refiner.components.kind == "sdxl_refiner" and refiner.text_encoder is None
    out = xl("an old map", num_inference_steps=8, guidance_scale=5.0, sampler=sampler, seed=21, progress=False,
             refiner=refiner, refiner_switch=0.75)
    assert_close(out.images[0], want)
    assert out.params[0].extra["Refiner switch at"] == 0.75 and "Refiner" in out.params[0].extra


def test_refiner_alone_is_an_img2img_model(tiny_sdxl_refiner_folder, tiny_sdxl_refiner):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    ref = reference(StableDiffusionXLImg2ImgPipeline, tiny_sdxl_refiner_folder, tiny_sdxl_refiner, "euler")
    want = ref("a vase", image=picture(2), strength=0.5, num_inference_steps=6, guidance_scale=4.0, aesthetic_score=7.0,
               generator=[torch.Generator().manual_seed(2)]).images[0]
    refiner = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_refiner_folder, device="cpu", dtype="fp32")
    got = refiner.img2img("a vase", picture(2), strength=0.5, num_inference_steps=6, guidance_scale=4.0, sampler="euler", seed=2,
                          micro_conditioning={"aesthetic_score": 7.0}, progress=False).images[0]
    assert_close(got, want)


def test_fp16_keeps_the_sdxl_vae_in_fp32(tiny_sdxl_folder):
    """SDXL's VAE overflows in fp16 (force_upcast): it stays fp32 while the rest runs in fp16, as diffusers decodes."""
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")
    pipe.to(dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.components.text_encoder_2.dtype == torch.float16
    assert pipe.vae.dtype == torch.float32 and pipe.vae.config.scaling_factor == 0.13025
    pipe.vae.register_to_config(force_upcast=False)  # a fixed fp16 VAE says so in its config
    pipe.to(dtype=torch.float16)
    assert pipe.vae.dtype == torch.float16
