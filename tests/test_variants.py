"""U-Net variants and the DiT backbone: shapes, gradients, the operators' defining properties, and SD defaults untouched."""

import pytest
import torch
import torch.nn.functional as F

from latentdiff.errors import LatentDiffError
from latentdiff.models.dit import DiT, DiTConfig, count_parameters, dit_matching, sincos_2d
from latentdiff.models.unet import UNet, UNetConfig
from latentdiff.models.variants import (BlurDownsample, LinearAttention, ShuffleUpsample, UnshuffleDownsample,
                                        make_downsampler, make_upsampler)

CTX = 16


def tiny(**kw) -> UNetConfig:
    base = dict(block_out_channels=(16, 32), layers_per_block=1, attention_levels=(False, True), num_heads=2,
                cross_attention_dim=CTX, norm_num_groups=8, sample_size=8)
    return UNetConfig(**{**base, **kw})


def lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter so zero-initialised paths (adaLN-Zero) carry gradient too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def check_forward_backward(model, h: int, w: int, channels: int = 4, **extra) -> torch.Tensor:
    """Output has the input's shape; every parameter gets a finite, non-zero gradient."""
    torch.manual_seed(1)
    x, c = torch.randn(2, channels, h, w), torch.randn(2, 5, CTX)
    out = model(x, torch.tensor([3, 900]), c, **extra)
    assert out.shape == (2, model.config.out_channels, h, w)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    return out


@pytest.mark.parametrize("down", ["conv", "avgpool", "maxpool", "blurpool", "unshuffle"])
def test_downsample_variants_shapes_and_gradients(down):
    model = UNet(tiny(downsample=down))
    check_forward_backward(model, 8, 8)
    check_forward_backward(model, 7, 10)  # odd side: every downsampler gives ⌈h/2⌉ like SD's strided conv
    assert make_downsampler(down, 8)(torch.randn(1, 8, 7, 10)).shape == (1, 8, 4, 5)


@pytest.mark.parametrize("up", ["nearest_conv", "bilinear_conv", "transposed", "shuffle"])
def test_upsample_variants_shapes_and_gradients(up):
    model = UNet(tiny(upsample=up))
    check_forward_backward(model, 8, 8)
    check_forward_backward(model, 7, 10)
    assert make_upsampler(up, 8)(torch.randn(1, 8, 4, 5)).shape == (1, 8, 8, 10)
    assert make_upsampler(up, 8)(torch.randn(1, 8, 4, 5), (7, 9)).shape == (1, 8, 7, 9)


@pytest.mark.parametrize("kinds", [("linear", "full"), ("none", "linear"), ("none", "none")])
def test_attention_kinds_shapes_and_gradients(kinds):
    model = UNet(tiny(attention_types=kinds))
    check_forward_backward(model, 8, 8)
    names = {type(m).__name__ for m in model.modules()}
    assert ("LinearAttentionBlock" in names) == ("linear" in kinds)


def test_linear_attention_equals_its_quadratic_form():
    torch.manual_seed(0)
    attn = LinearAttention(16, heads=2, head_dim=8)
    x = torch.randn(2, 10, 16)
    q, k, v = attn.to_qkv(x).view(2, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
    phi = lambda t: F.elu(t) + 1  # noqa: E731
    weights = phi(q) @ phi(k).transpose(-1, -2)  # (B, h, N, N): the kernel the linear form never builds
    direct = (weights / weights.sum(-1, keepdim=True)) @ v
    want = attn.to_out(direct.transpose(1, 2).reshape(2, 10, 16))
    assert torch.allclose(attn(x), want, atol=1e-5)


def test_blur_downsample_is_zhangs_conv_then_blurpool_and_keeps_sd_names():
    torch.manual_seed(0)
    blur = BlurDownsample(6)
    x = torch.randn(1, 6, 16, 16)
    conv_s1 = F.conv2d(x, blur.conv.weight, blur.conv.bias, padding=1)  # Zhang: conv at stride 1 ...
    zhang = F.conv2d(conv_s1, blur.blur, stride=2, padding=1, groups=6)  # ... then blur-pool at stride 2
    ours = blur(x)
    assert ours.shape == (1, 6, 8, 8)
    assert torch.allclose(ours[..., 1:-1, 1:-1], zhang[..., 1:-1, 1:-1], atol=1e-5)  # equal away from the border
    assert set(blur.state_dict()) == set(make_downsampler("conv", 6).state_dict()) == {"conv.weight", "conv.bias"}
    flat = torch.full((1, 6, 9, 9), 3.0)  # the low-pass keeps a constant map constant, borders included (reflect pad)
    smoothed = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="reflect"), blur.blur, groups=6)
    assert torch.allclose(smoothed, flat)


def test_shuffle_upsample_starts_as_nearest_neighbour_icnr():
    torch.manual_seed(0)
    up = ShuffleUpsample(5)
    y = up(torch.randn(1, 5, 4, 6))  # (1, 5, 8, 12)
    for dy in (0, 1):
        for dx in (0, 1):
            assert torch.equal(y[..., dy::2, dx::2], y[..., 0::2, 0::2])


def test_unshuffle_downsample_keeps_every_pixel():
    down = UnshuffleDownsample(3)
    with torch.no_grad():  # a 1×1 conv that picks the top-left pixel of each 2×2 cell equals stride-2 subsampling
        down.conv.weight.zero_()
        down.conv.bias.zero_()
        for c in range(3):
            down.conv.weight[c, c * 4, 0, 0] = 1.0
    x = torch.randn(1, 3, 6, 8)
    assert torch.equal(down(x), x[..., ::2, ::2])


def test_self_conditioning_input():
    cfg = tiny(self_condition=True)
    model = UNet(cfg)
    assert model.conv_in.in_channels == cfg.in_channels + cfg.out_channels
    torch.manual_seed(0)
    x, c, prev = torch.randn(1, 4, 8, 8), torch.randn(1, 5, CTX), torch.randn(1, 4, 8, 8, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(model(x, 10, c), model(x, 10, c, x_self_cond=torch.zeros(1, 4, 8, 8)))
    out = model(x, 10, c, x_self_cond=prev)
    out.sum().backward()
    assert prev.grad.abs().sum() > 0  # the previous x0 estimate reaches the output
    check_forward_backward(model, 8, 8, x_self_cond=torch.randn(2, 4, 8, 8))


def test_skip_connections_off():
    on, off = UNet(tiny()), UNet(tiny(skip_connections=False))
    for block_on, block_off in zip(on.up_blocks, off.up_blocks):
        for r_on, r_off in zip(block_on.resnets, block_off.resnets):
            assert r_off.conv1.in_channels < r_on.conv1.in_channels  # the skip's channels are gone
    check_forward_backward(off, 7, 10)
    assert count_parameters(off) < count_parameters(on)


def test_defaults_are_sd_and_variants_do_not_map_to_diffusers():
    from diffusers import UNet2DConditionModel

    sd = UNetConfig()
    assert sd.variant_settings() == [] and sd.level_attention == ("full", "full", "full", "none")
    cfg = tiny()
    with torch.device("meta"):
        ref_keys = set(UNet2DConditionModel.from_config(cfg.to_diffusers()).state_dict())
        assert set(UNet(cfg).state_dict()) == ref_keys  # names unchanged with default variant fields
        assert set(UNet(tiny(downsample="blurpool")).state_dict()) == ref_keys  # same weights layout, different op
    assert UNetConfig.from_diffusers(cfg.to_diffusers()) == cfg
    for variant in [dict(downsample="maxpool"), dict(upsample="shuffle"), dict(attention_types=("linear", "full")),
                    dict(self_condition=True), dict(skip_connections=False)]:
        key = next(iter(variant))
        with pytest.raises(LatentDiffError, match=f"cannot express this U-Net variant.*{key}"):
            tiny(**variant).to_diffusers()


def test_default_numerics_match_diffusers():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    ref = lively(UNet2DConditionModel.from_config(tiny().to_diffusers())).eval()
    ours = UNet(tiny()).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 5, CTX)
    with torch.no_grad():
        want, got = ref(x, torch.tensor([5, 500]), c).sample, ours(x, torch.tensor([5, 500]), c)
    assert ((want - got).norm() / want.norm()).item() < 1e-6


def test_config_fields_validate_and_round_trip():
    cfg = tiny(downsample="unshuffle", upsample="transposed", attention_types=("linear", "full"), self_condition=True)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.attention_levels == (True, True) and cfg.level_attention == ("linear", "full")
    assert tiny(attention_types=("none", "full")) == tiny()  # bool-expressible kinds are stored canonically as levels
    dims = UNetConfig.from_dict(dict(dim=16, dim_mults=[1, 2, 2], num_heads=2, norm_num_groups=8, cross_attention_dim=CTX))
    assert dims.block_out_channels == (16, 32, 32) and dims.level_attention == ("linear", "linear", "full")
    for bad, msg in [(dict(downsample="stride3"), "unknown downsample 'stride3'"), (dict(upsample="magic"), "unknown upsample"),
                     (dict(attention_types=("full",)), "attention_types has 1 entries for 2 levels"),
                     (dict(attention_types=("none", "sparse")), "unknown attention kind 'sparse'")]:
        with pytest.raises(LatentDiffError, match=msg):
            tiny(**bad)
    with pytest.raises(LatentDiffError, match="not both"):
        UNetConfig.from_dict(dict(dim=16, block_out_channels=[16, 32]))


def tiny_dit(**kw) -> DiTConfig:
    return DiTConfig(**{**dict(hidden_size=32, depth=2, num_heads=2, cross_attention_dim=CTX, sample_size=8), **kw})


def test_dit_shapes_gradients_and_patch_check():
    model = lively(DiT(tiny_dit()))
    check_forward_backward(model, 8, 12)
    with pytest.raises(LatentDiffError, match="divisible by 2"):
        model(torch.randn(1, 4, 7, 8), 1, torch.randn(1, 5, CTX))
    assert DiTConfig.from_dict(tiny_dit().to_dict()) == tiny_dit()
    with pytest.raises(LatentDiffError, match="not divisible by 3 heads"):
        tiny_dit(num_heads=3)


def test_dit_adaln_zero_init_blocks_start_as_identity():
    torch.manual_seed(0)
    model = DiT(tiny_dit())
    x, c, t = torch.randn(1, 5, 32), torch.randn(1, 5, CTX), torch.randn(1, 32)
    with torch.no_grad():
        for block in model.blocks:
            assert torch.equal(block(x, t, c), x)
        assert model(torch.randn(1, 4, 8, 8), 5, c).abs().max() == 0  # zero output layer (DiT's init)


def test_dit_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for on in (False, True):
        torch.manual_seed(0)
        model = lively(DiT(tiny_dit())).train()
        model.enable_gradient_checkpointing(on)
        torch.manual_seed(2)
        model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.randn(2, 5, CTX)).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_dit_positions_and_parameter_matching():
    pos = sincos_2d(8, 3, 4)
    assert pos.shape == (12, 8) and torch.allclose(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    assert len({tuple(p.tolist()) for p in pos}) == 12  # every position distinct
    target = count_parameters(UNet(tiny()))
    cfg = dit_matching(target, depth=2, num_heads=2, cross_attention_dim=CTX)
    with torch.device("meta"):
        n = count_parameters(DiT(cfg))
        narrower = count_parameters(DiT(DiTConfig(**{**cfg.to_dict(), "hidden_size": cfg.hidden_size - 16})))
        wider = count_parameters(DiT(DiTConfig(**{**cfg.to_dict(), "hidden_size": cfg.hidden_size + 16})))
    assert abs(n - target) <= min(abs(narrower - target), abs(wider - target))


def test_variant_unet_saves_and_loads_as_a_folder(tmp_path):
    """A variant diffusers cannot express is written in our config format and loads back bit-identically."""
    import json
    from dataclasses import replace

    from conftest import tiny_components

    from latentdiff.checkpoints import load_components, save_diffusers_folder, save_single_file
    from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

    c = tiny_components()
    cfg = replace(c.unet.config, downsample="maxpool", upsample="shuffle", attention_types=("linear", "full"))
    torch.manual_seed(3)
    c.unet = lively(UNet(cfg)).eval()
    folder = save_diffusers_folder(c, tmp_path / "variant")
    saved = json.loads((folder / "unet" / "config.json").read_text())
    assert saved["_class_name"] == "latentdiff.UNet" and saved["downsample"] == "maxpool"
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["latentdiff", "UNet"]
    back = load_components(folder)
    assert back.unet.config == cfg
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 5, cfg.cross_attention_dim)
    with torch.no_grad():
        assert torch.equal(back.unet(x, torch.tensor([3, 700]), ctx), c.unet(x, torch.tensor([3, 700]), ctx))
    a = LatentDiffusionPipeline(c)("a cat", num_inference_steps=3, seed=1, progress=False).images[0]
    b = LatentDiffusionPipeline(back)("a cat", num_inference_steps=3, seed=1, progress=False).images[0]
    assert a.tobytes() == b.tobytes()
    with pytest.raises(LatentDiffError, match="cannot express this U-Net variant"):  # LDM single files have no such layout
        save_single_file(c, tmp_path / "variant.safetensors")
    assert not (tmp_path / "variant.safetensors").exists()
