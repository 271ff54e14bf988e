"""SDXL U-Net: per-level transformer depth and the "text_time" added embedding, against diffusers."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from latentdiff.checkpoints.loader import build_unet
from latentdiff.errors import LatentDiffError
from latentdiff.models.unet import UNet, UNetConfig

# The published configs of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0 (unet/config.json, structure keys).
XL_BASE = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
               use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
               projection_class_embeddings_input_dim=2816)
XL_REFINER = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=(6, 12, 24, 24), transformer_layers_per_block=4, cross_attention_dim=1280,
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2560)


def tiny_xl(depth=(1, 2, 3), in_channels=4, levels=3) -> dict:
    """SDXL's structure at widths 32/64/64: level 0 without attention, per-level depth, text_time embedding."""
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    return dict(sample_size=16, in_channels=in_channels, block_out_channels=(32, 64, 64)[:levels], layers_per_block=2,
                down_block_types=down, up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
                attention_head_dim=(1, 2, 4)[:levels], transformer_layers_per_block=depth, cross_attention_dim=48,
                use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=24 + 6 * 8)


def pair(kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref, build_unet(UNetConfig.from_diffusers(dict(ref.config)), dict(ref.state_dict()), "test")


@pytest.mark.parametrize("depth", [(1, 2, 3), (2, 1, 1), 2, (1, 1, 4)], ids=str)
def test_tiny_sdxl_parity(depth):
    ref, ours = pair(tiny_xl(depth))
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.randn(2, 77, 48)
    added = {"text_embeds": torch.randn(2, 24), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 512, 16, 8, 1024, 896]])}
    with torch.no_grad():
        want = ref(x, t, c, added_cond_kwargs=added).sample
        got = ours(x, t, c, added_cond_kwargs=added)
    assert got.shape == (2, 4, 16, 16)
    assert ((want - got).norm() / want.norm()).item() <= 1e-5
    # the added embedding matters: other micro-conditioning numbers change the output
    other = {**added, "time_ids": added["time_ids"] + 64}
    with torch.no_grad():
        assert (ours(x, t, c, added_cond_kwargs=other) - got).abs().max() > 1e-3


def test_refiner_like_and_inpaint_parity():
    """Four levels with attention only in the middle two (the refiner's pattern), 9 input channels (SDXL inpainting)."""
    kw = tiny_xl(3, in_channels=9)
    kw.update(block_out_channels=(32, 64, 64, 64), attention_head_dim=(1, 2, 4, 4),
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              projection_class_embeddings_input_dim=24 + 5 * 8)  # the refiner's 5 numbers: size, crop, aesthetic score
    ref, ours = pair(kw, seed=1)
    x, t, c = torch.randn(1, 9, 16, 16), torch.tensor([500]), torch.randn(1, 77, 48)
    added = {"text_embeds": torch.randn(1, 24), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 6.0]])}
    with torch.no_grad():
        want, got = ref(x, t, c, added_cond_kwargs=added).sample, ours(x, t, c, added_cond_kwargs=added)
    assert ((want - got).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("name,kwargs,params", [("base", XL_BASE, 2_567_463_684), ("refiner", XL_REFINER, 2_259_526_660)])
def test_full_layout_on_meta(name, kwargs, params):
    """The full SDXL base and refiner: every parameter name and shape equals diffusers' (built on the meta device)."""
    with torch.device("meta"):
        ref = UNet2DConditionModel(**kwargs)
        ours = UNet(UNetConfig.from_diffusers(dict(ref.config)))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(got) == list(want) or sorted(got) == sorted(want)
    assert got == want
    assert sum(v.numel() for v in ours.parameters()) == params


def test_config_round_trip_and_errors():
    ref, ours = pair(tiny_xl((1, 2, 3)))
    again = UNetConfig.from_diffusers(ours.config.to_diffusers())
    assert again == ours.config and again.transformer_depth == (1, 2, 3)
    assert UNetConfig.from_dict(ours.config.to_dict()) == ours.config
    with pytest.raises(LatentDiffError, match="added_cond_kwargs"):
        ours(torch.randn(1, 4, 16, 16), 10, torch.randn(1, 77, 48))
    with pytest.raises(LatentDiffError, match="transformer_depth has 2 entries"):
        UNetConfig(block_out_channels=(32, 64, 64), norm_num_groups=8, attention_levels=(False, True, True), num_heads=2,
                   transformer_depth=(1, 2))
    with pytest.raises(LatentDiffError, match="addition_embed_type"):
        UNetConfig.from_diffusers({**ref.config, "addition_embed_type": "image"})


def test_profiler_counts_the_shipped_sdxl_preset():
    """`latentdiff profile latentdiff/checkpoints/presets/sdxl_base.yaml`: the full base at 128² latents (1024² pixels), meta device."""
    from latentdiff.profiling import count_flops, load_arch_config

    _, config, _ = load_arch_config("latentdiff/checkpoints/presets/sdxl_base.yaml")
    flops, params = count_flops(config)
    assert params == 2_567_463_684
    assert flops == 6_761_236_398_080  # 8.4× SD1.5's 0.803 TFLOP at 64² (DESIGN.md)
