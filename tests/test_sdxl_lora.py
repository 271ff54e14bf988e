"""SDXL LoRAs (kohya with SGM U-Net names and lora_te1_/lora_te2_, and diffusers/peft) against diffusers' load_lora_weights."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import save_file

from latentdiff import LatentDiffusionPipeline
from latentdiff.lora.attach import component_modules
from latentdiff.lora.formats import LoraModule, to_peft
from latentdiff.lora.sdxl import to_kohya_sdxl
from latentdiff.pipelines.samplers import make_scheduler

KW = dict(num_inference_steps=3, guidance_scale=5.0)
SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "q_proj", "v_proj", "out_proj", "mlp.fc1")


def random_lora(c, rank=4, alpha=2.0, seed=0):
    """Random (trained-looking) pairs on attention, projections and MLPs of the U-Net and both text encoders."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, m in component_modules(c.unet, c.text_encoder, c.text_encoder_2).items():
        if isinstance(m, torch.nn.Linear) and key.endswith(SUFFIXES):
            state[key] = LoraModule(torch.randn(rank, m.in_features, generator=g) * 0.3,
                                    torch.randn(m.out_features, rank, generator=g) * 0.3, alpha, key)
    assert {k.split(".")[0] for k in state} == {"unet", "text_encoder", "text_encoder_2"}
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_sdxl):
    state = random_lora(tiny_sdxl)
    folder = tmp_path_factory.mktemp("loras")
    kohya = folder / "xl_kohya.safetensors"
    save_file({k: v.contiguous() for k, v in to_kohya_sdxl(state, tiny_sdxl.unet).items()}, str(kohya))
    tensors, header = to_peft(state)
    peft = folder / "xl_peft.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(peft), header)
    return {"kohya": kohya, "peft": peft}


@pytest.mark.parametrize("form", ["kohya", "peft"])
def test_lora_matches_diffusers(form, files, tiny_sdxl_folder, tiny_sdxl):
    from safetensors.torch import load_file

    keys = list(load_file(str(files[form])))
    if form == "kohya":
        assert any(k.startswith("lora_unet_input_blocks_") for k in keys) and any(k.startswith("lora_te1_") for k in keys)
        assert any(k.startswith("lora_te2_") for k in keys)
    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_folder), local_files_only=True, add_watermarker=False)
    ref.scheduler = make_scheduler("euler", tiny_sdxl.scheduler_config)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(files[form]))
    want = ref("a paper boat", generator=[torch.Generator().manual_seed(9)], height=64, width=64, **KW).images[0]

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")
    base = pipe("a paper boat", sampler="euler", seed=9, progress=False, **KW).images[0]
    name = pipe.load_lora(files[form])
    assert pipe.loras.adapters[name].layers == len(random_lora(tiny_sdxl))
    got = pipe("a paper boat", sampler="euler", seed=9, progress=False, **KW).images[0]
    d = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
    assert d.max() <= 2, (d.max(), d.mean())
    assert np.abs(np.asarray(got, np.int16) - np.asarray(base, np.int16)).max() > 10  # the LoRA changes the picture


def test_switch_and_fuse(files, tiny_sdxl_folder):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")
    run = lambda: np.asarray(pipe("a paper boat", sampler="euler", seed=9, progress=False, **KW).images[0], np.int16)  # noqa: E731
    base = run()
    a, b = pipe.load_lora(files["kohya"], name="a"), pipe.load_lora(files["peft"], name="b", weight=0.5)
    both = run()
    pipe.set_loras({"a": 1.0})
    only_a = run()
    pipe.fuse_loras()
    assert np.abs(run() - only_a).max() <= 1
    pipe.unfuse_loras()
    pipe.disable_loras()
    assert np.array_equal(run(), base)
    assert np.abs(both - only_a).max() > 2
