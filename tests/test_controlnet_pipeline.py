"""ControlNet pipelines draw diffusers' pixels: StableDiffusionControlNet{,Img2Img,Inpaint}Pipeline, one ControlNet or
several (MultiControlNet), guidance start/end and guess mode, on tiny random models in fp32 (≤ 2/255)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetInpaintPipeline,
                       StableDiffusionControlNetPipeline)
from PIL import Image

from conftest import tiny_components
from latentdiff.checkpoints import save_diffusers_folder
from latentdiff.checkpoints.controlnet import save_controlnet_folder
from latentdiff.pipelines.control import ControlUnit
from latentdiff.pipelines.samplers import make_scheduler
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline
from test_controlnet_model import random_controlnet

PROMPT, NEGATIVE, SIZE, STEPS = "a cat in a spacesuit", "blurry", 64, 5


def picture(seed: int, size: int = SIZE) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def box_mask() -> Image.Image:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[8:40, 16:56] = 255
    return Image.fromarray(m)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Two tiny SD1-layout ControlNets as diffusers folders."""
    root = tmp_path_factory.mktemp("controlnets")
    return [save_controlnet_folder(random_controlnet("sd1", seed=s), root / f"cn{s}") for s in (11, 12)]


@pytest.fixture(scope="module")
def ours(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


def theirs(cls, folder, nets, sampler, ours):
    cn = [ControlNetModel.from_pretrained(n) for n in nets]
    ref = cls.from_pretrained(str(folder), controlnet=cn if len(cn) > 1 else cn[0], safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler(sampler, ours.components.scheduler_config)
    return ref


def their_args(units: list[ControlUnit], guess: bool) -> dict:
    one = len(units) == 1
    pick = (lambda xs: xs[0]) if one else list
    return dict(controlnet_conditioning_scale=pick([u.weight for u in units]), guess_mode=guess,
                control_guidance_start=pick([u.start for u in units]), control_guidance_end=pick([u.end for u in units]))


@pytest.mark.parametrize("sampler,n_nets,guess", [("dpmpp_2m", 1, False), ("euler_a", 1, True), ("ddim", 2, False)])
def test_txt2img_matches_diffusers(ours, tiny_folder, nets, sampler, n_nets, guess):
    units = [ControlUnit(n, picture(20 + i), weight=w, start=s, end=e, guess_mode=guess)
             for i, (n, w, s, e) in enumerate(zip(nets[:n_nets], (0.8, 1.3), (0.0, 0.2), (0.8, 1.0)))]
    ref = theirs(StableDiffusionControlNetPipeline, tiny_folder, nets[:n_nets], sampler, ours)
    imgs = [u.image for u in units]
    want = ref(PROMPT, negative_prompt=NEGATIVE, image=imgs[0] if n_nets == 1 else imgs, num_inference_steps=STEPS,
               guidance_scale=6.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(7),
               **their_args(units, guess)).images[0]
    got = ours(PROMPT, NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0, sampler=sampler, seed=7, progress=False,
               controls=units)
    plain = ours(PROMPT, NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0, sampler=sampler, seed=7, progress=False)
    assert max_diff(got.images[0], want) <= 2
    assert max_diff(got.images[0], plain.images[0]) > 10  # the ControlNets change the picture
    assert got.params[0].extra["ControlNet 0"].startswith("Module: none, Model: cn11 [")
    assert len(got.params[0].controls) == n_nets


def test_img2img_matches_diffusers(ours, tiny_folder, nets):
    unit = ControlUnit(nets[0], picture(30), weight=1.5, start=0.0, end=0.6)
    ref = theirs(StableDiffusionControlNetImg2ImgPipeline, tiny_folder, nets[:1], "euler", ours)
    want = ref(PROMPT, image=picture(31), control_image=unit.image, strength=0.7, num_inference_steps=STEPS, guidance_scale=5.0,
               height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), **their_args([unit], False)).images[0]
    got = ours.img2img(PROMPT, picture(31), strength=0.7, num_inference_steps=STEPS, guidance_scale=5.0, sampler="euler",
                       seed=3, progress=False, controls=[unit]).images[0]
    assert max_diff(got, want) <= 2


@pytest.fixture(scope="module")
def folder9(tmp_path_factory):
    return save_diffusers_folder(tiny_components("sd1", seed=2, in_channels=9), tmp_path_factory.mktemp("m") / "tiny-inpaint")


@pytest.mark.parametrize("nine", [True, False])
def test_inpaint_matches_diffusers(tiny_folder, folder9, nets, nine):
    folder = folder9 if nine else tiny_folder
    pipe = LatentDiffusionPipeline.from_pretrained(folder, dtype="fp32")
    units = [ControlUnit(n, picture(40 + i), weight=0.9) for i, n in enumerate(nets)]
    ref = theirs(StableDiffusionControlNetInpaintPipeline, folder, nets, "dpmpp_2m", pipe)
    want = ref(PROMPT, image=picture(41), mask_image=box_mask(), control_image=[u.image for u in units], strength=1.0,
               num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(5), **their_args(units, False)).images[0]
    got = pipe.inpaint(PROMPT, picture(41), box_mask(), strength=1.0, num_inference_steps=STEPS, guidance_scale=7.5,
                       sampler="dpmpp_2m", seed=5, overlay_original=False, progress=False, controls=units).images[0]
    assert max_diff(got, want) <= 2


def test_single_file_and_folder_draw_identical_pixels(ours, tmp_path):
    """The A1111 layout (fp16 `control_model.*` safetensors) and the diffusers folder of the same weights."""
    from latentdiff.checkpoints.controlnet import save_controlnet_single_file

    net = random_controlnet("sd1", seed=13).half().float()  # weights an fp16 file holds exactly
    folder = save_controlnet_folder(net, tmp_path / "cn-folder")
    single = save_controlnet_single_file(net, tmp_path / "control_tiny_fp16.safetensors")
    kw = dict(num_inference_steps=3, guidance_scale=6.0, sampler="euler", seed=1, progress=False)
    a = ours(PROMPT, controls=[ControlUnit(folder, picture(50), weight=1.2)], **kw)
    b = ours(PROMPT, controls=[ControlUnit(single, picture(50), weight=1.2)], **kw)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert b.params[0].extra["ControlNet 0"].split(", ")[1].startswith("Model: control_tiny_fp16 [")


def test_sd2_v_prediction_matches_diffusers(tiny_folder_sd2, tmp_path):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder_sd2, dtype="fp32")
    net = save_controlnet_folder(random_controlnet("sd2", seed=14), tmp_path / "cn-sd2")
    unit = ControlUnit(net, picture(60), weight=1.1, start=0.0, end=0.75)
    ref = theirs(StableDiffusionControlNetPipeline, tiny_folder_sd2, [net], "euler", pipe)
    want = ref(PROMPT, image=unit.image, num_inference_steps=4, guidance_scale=5.0, height=SIZE, width=SIZE,
               generator=torch.Generator().manual_seed(3), **their_args([unit], False)).images[0]
    got = pipe(PROMPT, num_inference_steps=4, guidance_scale=5.0, sampler="euler", seed=3, progress=False, controls=[unit])
    assert max_diff(got.images[0], want) <= 2


def test_controlnet_of_another_family_is_one_line_error(tiny_folder_sd2, nets):
    from latentdiff.errors import LatentDiffError

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder_sd2, dtype="fp32")
    with pytest.raises(LatentDiffError, match="reads 32-d text embeddings, this model makes 48-d ones"):
        pipe(PROMPT, num_inference_steps=2, progress=False, controls=[ControlUnit(nets[0], picture(1))])


@pytest.mark.parametrize("guess", [False, True])
def test_sdxl_matches_diffusers(tiny_sdxl_folder, tiny_sdxl, tmp_path, guess):
    """SDXL: the ControlNet gets the U-Net's pooled text and time ids (StableDiffusionXLControlNetPipeline)."""
    from diffusers import StableDiffusionXLControlNetPipeline

    from latentdiff.models.controlnet import ControlNet, ControlNetConfig

    torch.manual_seed(15)
    net = ControlNet(ControlNetConfig.for_unet(tiny_sdxl.unet.config, conditioning_embedding_out_channels=(4, 8, 8, 16)))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = save_controlnet_folder(net, tmp_path / "cn-xl")
    xl = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")
    unit = ControlUnit(folder, picture(70), weight=0.9, start=0.0, end=0.75, guess_mode=guess)
    ref = StableDiffusionXLControlNetPipeline.from_pretrained(str(tiny_sdxl_folder), controlnet=ControlNetModel.from_pretrained(folder),
                                                              local_files_only=True, add_watermarker=False)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler("euler", xl.components.scheduler_config)
    want = ref("a red fox", image=unit.image, num_inference_steps=4, guidance_scale=5.0, height=SIZE, width=SIZE,
               generator=[torch.Generator().manual_seed(7)], **their_args([unit], guess)).images[0]
    got = xl("a red fox", num_inference_steps=4, guidance_scale=5.0, sampler="euler", seed=7, progress=False, controls=[unit])
    plain = xl("a red fox", num_inference_steps=4, guidance_scale=5.0, sampler="euler", seed=7, progress=False)
    assert max_diff(got.images[0], want) <= 2
    assert max_diff(got.images[0], plain.images[0]) > 10
