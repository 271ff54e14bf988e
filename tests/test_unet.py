"""Our U-Net against diffusers' UNet2DConditionModel with the same random weights (strict state-dict load)."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from latentdiff.checkpoints.loader import build_unet
from latentdiff.models.attention import set_attention_backend
from latentdiff.models.unet import UNet, UNetConfig
from latentdiff.errors import LatentDiffError

SMALL = {
    "sd1": dict(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=32, attention_head_dim=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, sample_size=16),
    "sd2": dict(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=48, attention_head_dim=(2, 4, 4),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
                use_linear_projection=True, upcast_attention=True, sample_size=16),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def pair(diffusers_kwargs: dict, seed: int = 0) -> tuple[UNet2DConditionModel, UNet]:
    torch.manual_seed(seed)
    ref = UNet2DConditionModel(**diffusers_kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():  # diffusers zero-inits some projections; make every path count
            p.add_(torch.randn_like(p) * 0.02)
    ours = build_unet(UNetConfig.from_diffusers(dict(ref.config)), dict(ref.state_dict()), "test")
    return ref, ours


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
def test_small_layout_parity(layout, parity_target):
    """diffusers in fp32 on the CPU is the answer; ours runs on `--device`/`--dtype` (fp32 CPU by default: ≤ 1e-5)."""
    ref, ours = pair(SMALL[layout])
    ctx = SMALL[layout]["cross_attention_dim"]
    x, t, c = torch.randn(2, 4, 16, 16), torch.tensor([3, 700]), torch.randn(2, 77, ctx)
    dev, dt = parity_target.device, parity_target.dtype
    ours = ours.to(dev, dt)
    with torch.no_grad():
        want = ref(x, t, c).sample
        got = ours(x.to(dev, dt), t.to(dev), c.to(dev, dt)).float().cpu()
    assert got.shape == (2, 4, 16, 16)
    assert rel_err(want, got) <= parity_target.rel


def test_odd_latent_size_and_scalar_timestep():
    ref, ours = pair(SMALL["sd1"])
    x, c = torch.randn(1, 4, 12, 20), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert rel_err(ref(x, 250, c).sample, ours(x, 250, c)) <= 1e-5


def test_config_round_trips_through_diffusers_config():
    ref, ours = pair(SMALL["sd2"])
    again = UNetConfig.from_diffusers(ours.config.to_diffusers())
    assert again == ours.config
    assert UNet2DConditionModel.from_config(ours.config.to_diffusers()).state_dict().keys() == ours.state_dict().keys()


def test_attention_backends_agree():
    _, ours = pair(SMALL["sd1"])
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        sdpa = ours(x, 10, c)
        set_attention_backend(ours, "math")
        math = ours(x, 10, c)
    assert rel_err(sdpa, math) <= 1e-5
    with pytest.raises(LatentDiffError, match="unknown attention backend"):
        set_attention_backend(ours, "flash9")


def test_unsupported_diffusers_configs_are_refused():
    cfg = UNet2DConditionModel(**SMALL["sd1"]).config
    with pytest.raises(LatentDiffError, match="addition_embed_type"):
        UNetConfig.from_diffusers({**cfg, "addition_embed_type": "text_time"})
    with pytest.raises(LatentDiffError, match="block type 'SimpleCrossAttnDownBlock2D'"):
        UNetConfig.from_diffusers({**cfg, "down_block_types": ["SimpleCrossAttnDownBlock2D"] * 3})


def test_weights_of_another_shape_name_the_key():
    ref, _ = pair(SMALL["sd1"])
    state = dict(ref.state_dict())
    state["conv_in.weight"] = torch.zeros(32, 5, 3, 3)
    with pytest.raises(LatentDiffError, match=r"conv_in.weight has shape \(32, 5, 3, 3\)"):
        build_unet(UNetConfig.from_diffusers(dict(ref.config)), state, "test")


@pytest.mark.slow
def test_full_sd15_layout_parity():
    """The real SD1.5 U-Net (860M parameters), one forward at 64×64 latents on CPU."""
    torch.manual_seed(0)
    ref = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()  # SD1.5 defaults
    ours = build_unet(UNetConfig.from_diffusers(dict(ref.config)), dict(ref.state_dict()), "sd15")  # shares the tensors
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    x, c = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
    with torch.no_grad():
        want = ref(x, 500, c).sample
        got = ours(x, 500, c)
    assert rel_err(want, got) <= 1e-5
