"""ControlNet files: diffusers folders and A1111/lllyasviel single files load to the same weights, by an explicit key
map that agrees with diffusers' own converter; bad files fail in one line."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from latentdiff.checkpoints import controlnet_keys as CK
from latentdiff.checkpoints.controlnet import (layout_of, load_controlnet, save_controlnet_folder,
                                               save_controlnet_single_file)
from latentdiff.errors import LatentDiffError
from test_controlnet_model import random_controlnet


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def net(request):
    return random_controlnet(request.param, seed=5)


def same_weights(a, b, dtype=None) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].to(dtype or sa[k].dtype), sb[k].to(dtype or sa[k].dtype)) for k in sa)


def test_diffusers_folder_loads(net, tmp_path):
    ControlNetModel.from_config(net.config.to_diffusers()).save_pretrained(tmp_path / "theirs")  # diffusers' own writer
    theirs = load_controlnet(tmp_path / "theirs")
    assert theirs.config == net.config
    save_controlnet_folder(net, tmp_path / "ours")
    assert same_weights(load_controlnet(tmp_path / "ours"), net)
    ref = ControlNetModel.from_pretrained(tmp_path / "ours")  # and diffusers reads ours
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in ref.state_dict().items())


def test_key_map_agrees_with_diffusers_converter(net):
    ldm = CK.to_ldm(net.state_dict(), layout_of(net))
    assert all(k.startswith("control_model.") for k in ldm)
    want = convert_controlnet_checkpoint(dict(ldm), net.config.to_diffusers())
    got = CK.to_diffusers(ldm, layout_of(net), "test")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k].reshape(got[k].shape)) for k in got)


def test_single_file_fp16_equals_folder(net, tmp_path):
    f = save_controlnet_single_file(net, tmp_path / "control_tiny_fp16.safetensors")
    loaded = load_controlnet(f, base=net.config.unet)
    assert loaded.config == net.config  # heads and groups from the base U-Net, the rest from the keys
    assert next(loaded.parameters()).dtype == torch.float16
    assert same_weights(loaded, net, torch.float16)


def test_lllyasviel_pth_needs_allow_pickle(net, tmp_path):
    state = {k[len(CK.PREFIX):]: v for k, v in CK.to_ldm(net.state_dict(), layout_of(net)).items()}  # v1.1: no prefix
    torch.save(state, tmp_path / "control_v11p_tiny.pth")
    with pytest.raises(LatentDiffError, match="pickle.*--allow-pickle"):
        load_controlnet(tmp_path / "control_v11p_tiny.pth")
    assert same_weights(load_controlnet(tmp_path / "control_v11p_tiny.pth", allow_pickle=True, base=net.config.unet), net)


def test_bad_files_are_one_line_errors(net, tmp_path):
    from latentdiff.fileio import save_safetensors

    save_safetensors({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, tmp_path / "sd.safetensors")
    with pytest.raises(LatentDiffError, match="is not a ControlNet"):
        load_controlnet(tmp_path / "sd.safetensors")
    ldm = CK.to_ldm(net.state_dict(), layout_of(net))
    ldm["control_model.zero_convs.0.0.weight"] = torch.zeros(3, 3, 1, 1)
    save_safetensors(ldm, tmp_path / "bad.safetensors")
    with pytest.raises(LatentDiffError, match=r"zero_convs.0.0.weight has shape \(3, 3, 1, 1\)"):
        load_controlnet(tmp_path / "bad.safetensors")
    with pytest.raises(LatentDiffError, match="no such ControlNet"):
        load_controlnet(tmp_path / "missing.safetensors")
