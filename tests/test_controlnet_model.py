"""Our ControlNet and the U-Net's residual inputs match diffusers' ControlNetModel / UNet2DConditionModel on random weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from conftest import tiny_unet_config
from latentdiff.errors import LatentDiffError
from latentdiff.models.controlnet import ControlNet, ControlNetConfig
from latentdiff.models.unet import UNet


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_controlnet(kind: str, seed: int = 0) -> ControlNet:
    """A tiny ControlNet whose zero convolutions are made non-zero, so every path shows in the output."""
    torch.manual_seed(seed)
    net = ControlNet(ControlNetConfig.for_unet(tiny_unet_config(kind), conditioning_embedding_out_channels=(4, 8, 8, 16))).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def inputs(kind: str, b: int = 2, side: int = 8):
    g = torch.Generator().manual_seed(1)
    ctx = 48 if kind == "sd2" else 32
    return (torch.randn(b, 4, side, side, generator=g), torch.tensor([999, 421])[:b], torch.randn(b, 7, ctx, generator=g),
            torch.rand(b, 3, side * 8, side * 8, generator=g))


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
@pytest.mark.parametrize("guess_mode", [False, True])
def test_controlnet_matches_diffusers(kind, guess_mode):
    ours = random_controlnet(kind)
    theirs = ControlNetModel.from_config(ours.config.to_diffusers()).eval()
    assert sorted(theirs.state_dict()) == sorted(ours.state_dict())  # identical parameter names
    theirs.load_state_dict(ours.state_dict())
    x, t, ctx, cond = inputs(kind)
    with torch.no_grad():
        down, mid = ours(x, t, ctx, cond, conditioning_scale=0.7, guess_mode=guess_mode)
        want = theirs(x, t, ctx, cond, conditioning_scale=0.7, guess_mode=guess_mode, return_dict=False)
    assert len(down) == len(want[0]) == 1 + 2 * 1 + 1  # conv_in + 2 levels × 1 layer + 1 downsampler
    errors = [rel(a, b) for a, b in zip(down, want[0])] + [rel(mid, want[1])]
    assert max(errors) <= 1e-5, errors
    assert min(d.abs().mean().item() for d in down) > 1e-3  # the residuals are not zero


def test_config_round_trips_through_diffusers():
    cfg = random_controlnet("sd2").config
    back = ControlNetConfig.from_diffusers(ControlNetModel.from_config(cfg.to_diffusers()).config)
    assert back == cfg


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_unet_residual_inputs_match_diffusers(kind):
    torch.manual_seed(3)
    unet = UNet(tiny_unet_config(kind)).eval()
    ref = UNet2DConditionModel.from_config(unet.config.to_diffusers()).eval()
    ref.load_state_dict(unet.state_dict())
    net = random_controlnet(kind)
    x, t, ctx, cond = inputs(kind)
    with torch.no_grad():
        down, mid = net(x, t, ctx, cond)
        got = unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        want = ref(x, t, ctx, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid).sample
        plain = unet(x, t, ctx)
    assert rel(got, want) <= 1e-5
    assert rel(got, plain) > 1e-2  # the residuals change the prediction


def test_wrong_residual_count_is_one_line_error():
    unet = UNet(tiny_unet_config()).eval()
    x, t, ctx, _ = inputs("sd1")
    with pytest.raises(LatentDiffError, match="3 ControlNet residuals for 4 skip features"):
        unet(x, t, ctx, down_block_additional_residuals=[torch.zeros(1)] * 3)


def test_sdxl_controlnet_matches_diffusers():
    """SDXL layout: per-level transformer depth, 2-level text context, the added (pooled text, time ids) embedding."""
    from latentdiff.models.unet import UNetConfig

    torch.manual_seed(4)
    unet = UNetConfig(block_out_channels=(32, 64), layers_per_block=1, attention_levels=(False, True), num_heads=(1, 2),
                      transformer_depth=(1, 2), cross_attention_dim=80, use_linear_projection=True, norm_num_groups=8,
                      addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=64)
    ours = ControlNet(ControlNetConfig.for_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 16))).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    theirs = ControlNetModel.from_config(ours.config.to_diffusers()).eval()
    assert sorted(theirs.state_dict()) == sorted(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(2)
    x, ctx, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 80, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    added = {"text_embeds": torch.randn(2, 16, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        down, mid = ours(x, torch.tensor([999, 10]), ctx, cond, 0.9, added_cond_kwargs=added)
        want = theirs(x, torch.tensor([999, 10]), ctx, cond, 0.9, added_cond_kwargs=added, return_dict=False)
    assert max([rel(a, b) for a, b in zip(down, want[0])] + [rel(mid, want[1])]) <= 1e-5
    assert ControlNetConfig.from_diffusers(theirs.config) == ours.config
