"""The low layer (imaging, diffusion, fileio): one to_tensor with the old formulas' floats, the noise algebra against
diffusers' DDPMScheduler, and readers whose failures are one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.errors import LatentDiffError


def test_to_tensor_gives_both_old_formulas_floats():
    """Training used x/127.5 − 1 (3, H, W), inference (x/255)·2 − 1 (1, 3, H, W): identical float32 for every byte."""
    from latentdiff.imaging import to_tensor

    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(np.stack([values, values[::-1], values.T], axis=-1))
    one = to_tensor(image)
    training = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    inference = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    assert one.shape == (1, 3, 16, 16) and one.dtype == torch.float32
    assert torch.equal(one, inference) and torch.equal(one[0], training)
    assert one.min() == -1.0 and one.max() == 1.0


@pytest.mark.parametrize("config", [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000},
    {"beta_schedule": "linear", "num_train_timesteps": 100},
])
def test_noise_algebra_matches_diffusers(config):
    from diffusers import DDPMScheduler

    from latentdiff.diffusion import add_noise, alpha_bar_at, alphas_cumprod, target, v_target, x0_from_prediction

    sched = DDPMScheduler(**config)
    alphas = alphas_cumprod(config)
    assert torch.equal(alphas, sched.alphas_cumprod.float())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, config["num_train_timesteps"] // 2, config["num_train_timesteps"] - 1])
    ab = alpha_bar_at(alphas, t, x0.ndim)  # (3, 1, 1, 1)
    x_t = add_noise(x0, noise, ab)
    torch.testing.assert_close(x_t, sched.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_target(x0, noise, ab), sched.get_velocity(x0, noise, t), rtol=1e-6, atol=1e-6)
    assert torch.equal(target("epsilon", x0, noise, ab), noise)
    for kind, pred in (("epsilon", noise), ("v_prediction", v_target(x0, noise, ab))):
        torch.testing.assert_close(x0_from_prediction(x_t, pred, ab, kind), x0, rtol=2e-3, atol=2e-3)  # t = T−1: √ᾱ is small
    with pytest.raises(LatentDiffError, match="unknown prediction type 'sample'"):
        target("sample", x0, noise, ab)


def test_the_sampler_and_the_loss_share_x0_from_prediction():
    from latentdiff import diffusion
    from latentdiff.pipelines import guidance

    assert guidance.x0_from_prediction is diffusion.x0_from_prediction


def test_readers_fail_with_one_line(tmp_path):
    from latentdiff.fileio import read_json, read_safetensors, read_yaml, save_safetensors, write_json

    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    for call, message in [(lambda: read_yaml(tmp_path / "gone.yaml"), "no such config file: "),
                          (lambda: read_yaml(tmp_path / "bad.yaml"), "bad.yaml is not a readable YAML file ("),
                          (lambda: read_yaml(tmp_path / "list.yaml"), "list.yaml does not hold a YAML mapping"),
                          (lambda: read_json(tmp_path / "bad.json"), "bad.json is not a readable JSON file ("),
                          (lambda: read_safetensors(tmp_path / "gone.safetensors"), "no such weights file: "),
                          (lambda: read_safetensors(tmp_path / "bad.safetensors"), "bad.safetensors is not a readable .safetensors file")]:
        with pytest.raises(LatentDiffError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)
    assert read_yaml(tmp_path / "list.yaml", mapping=False) == [1]
    write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert read_json(tmp_path / "x.json") == {"a": [1, 2]}
    save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    assert torch.equal(read_safetensors(tmp_path / "w.safetensors")["w"], torch.ones(2))
