"""SDXL single files (SGM/A1111 layout): our writer and reader, diffusers' from_single_file, and pixel parity."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from latentdiff import LatentDiffusionPipeline
from latentdiff.checkpoints import load_components, save_single_file
from latentdiff.checkpoints.sdxl_single import CLIP_L
from latentdiff.errors import LatentDiffError


@pytest.fixture(scope="module")
def xl_file(tmp_path_factory, tiny_sdxl):
    return save_single_file(tiny_sdxl, tmp_path_factory.mktemp("xl") / "tiny-sdxl.safetensors")


def same_weights(a, b):
    for x, y in ((a.unet, b.unet), (a.vae, b.vae), (a.text_encoder, b.text_encoder), (a.text_encoder_2, b.text_encoder_2)):
        if x is None:
            assert y is None
            continue
        sa, sb = x.state_dict(), y.state_dict()
        assert sorted(sa) == sorted(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_layout_keys(xl_file, tiny_sdxl):
    state = load_file(str(xl_file))
    prefixes = {k.split(".")[0] + ("." + ".".join(k.split(".")[1:3]) if k.startswith("conditioner") else "") for k in state}
    assert prefixes == {"model", "first_stage_model", "conditioner.embedders.0", "conditioner.embedders.1"}
    assert f"{CLIP_L}encoder.layers.2.self_attn.q_proj.weight" in state
    assert state["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (144, 48)  # fused q, k, v
    assert state["conditioner.embedders.1.model.text_projection"].shape == (48, 16)  # (hidden, proj): OpenCLIP's x @ P
    assert state["model.diffusion_model.label_emb.0.0.weight"].shape == (128, 16 + 6 * 8)
    assert "model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight" in state  # depth 2 at level 1


def test_round_trip_bit_for_bit(xl_file, tiny_sdxl):
    back = load_components(xl_file)
    assert back.kind == "sdxl" and back.single_file and back.extra["force_zeros_for_empty_prompt"]
    same_weights(tiny_sdxl, back)


@pytest.mark.parametrize("which", ["tiny_sdxl_refiner", "tiny_sdxl_inpaint"])
def test_refiner_and_inpaint_round_trip(which, request, tmp_path):
    c = request.getfixturevalue(which)
    path = save_single_file(c, tmp_path / "m.safetensors")
    state = load_file(str(path))
    if which == "tiny_sdxl_refiner":
        assert any(k.startswith("conditioner.embedders.0.model.") for k in state)
        assert not any(k.startswith("conditioner.embedders.1") for k in state)
    back = load_components(path)
    assert back.kind == c.kind and back.extra == c.extra
    same_weights(c, back)


def test_diffusers_from_single_file_reads_ours(xl_file, tiny_sdxl, tiny_sdxl_folder):
    """diffusers' own converter (with the folder as its local config) gives the same weights as ours."""
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_single_file(str(xl_file), config=str(tiny_sdxl_folder), local_files_only=True,
                                                     add_watermarker=False)
    assert all(torch.equal(v, tiny_sdxl.unet.state_dict()[k]) for k, v in ref.unet.state_dict().items())
    for ours, theirs in ((tiny_sdxl.vae, ref.vae), (tiny_sdxl.text_encoder, ref.text_encoder), (tiny_sdxl.text_encoder_2, ref.text_encoder_2)):
        want = ours.state_dict()
        for k, v in theirs.state_dict().items():
            if not k.endswith("position_ids"):
                assert torch.equal(v, want[k]), k


def test_file_draws_the_folders_pixels(xl_file, tiny_sdxl_folder):
    kw = dict(num_inference_steps=3, guidance_scale=5.0, sampler="euler", seed=4, progress=False)
    a = LatentDiffusionPipeline.from_pretrained(xl_file, dtype="fp32")("a kite", **kw).images[0]
    b = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, dtype="fp32")("a kite", **kw).images[0]
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() == 0


def test_bad_files_say_why(xl_file, tmp_path):
    from safetensors import safe_open

    state = load_file(str(xl_file))
    with safe_open(str(xl_file), framework="pt") as f:
        meta = f.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))  # without our metadata the SDXL preset's 32 norm groups cannot fit the toy widths
    with pytest.raises(LatentDiffError, match="norm_num_groups 32 does not divide"):
        load_components(bad)
    save_file({**state, "conditioner.embedders.1.model.extra_thing": torch.zeros(1)}, str(bad), meta)
    with pytest.raises(LatentDiffError, match="unexpected key conditioner.embedders.1.model.extra_thing"):
        load_components(bad)
    key = "conditioner.embedders.1.model.ln_final.weight"
    save_file({**state, key: torch.zeros(7)}, str(bad), meta)
    with pytest.raises(LatentDiffError, match="ln_final.weight has shape"):
        load_components(bad)
    save_file({k: v for k, v in state.items() if not k.startswith("conditioner.embedders.1")}
              | {"conditioner.embedders.2.foo": torch.zeros(1)}, str(bad), meta)
    with pytest.raises(LatentDiffError, match="conditioner embedders we do not know"):
        load_components(bad)
