"""Tiny random SDXL models (base, refiner, 9-channel inpainting) in the real layouts, built at test time."""

from __future__ import annotations

import pytest
import torch

XL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear",
                "use_karras_sigmas": False, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
                "skip_prk_steps": True, "clip_sample": False}


def tiny_sdxl_components(kind: str = "sdxl", seed: int = 0):
    """SDXL's structure at toy widths: U-Net levels (32, 64) with depth (1, 2), CLIP-L-like 32-d +
    encoders (3 layers, pooled projection 16-d; bigG-like 48-d, widths differ as in SDXL so diffusers tells them apart), an 8×-downsampling VAE with SDXL's scaling factor, shipped tokenizers."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from latentdiff.checkpoints import Components
    from latentdiff.checkpoints.loader import load_tokenizer
    from latentdiff.models.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    refiner = kind == "sdxl_refiner"
    context = 48 if refiner else 32 + 48
    numbers = 5 if refiner else 6
    cfg = UNetConfig(in_channels=9 if kind == "sdxl_inpaint" else 4, block_out_channels=(32, 64), layers_per_block=1,
                     attention_levels=(False, True), num_heads=(1, 2), transformer_depth=(1, 2), cross_attention_dim=context,
                     use_linear_projection=True, norm_num_groups=8, sample_size=8, addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + numbers * 8)
    unet = UNet(cfg).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True).eval()

    def clip(cls, act, width, **kw):
        return cls(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  max_position_embeddings=77, hidden_act=act, bos_token_id=49406, eos_token_id=49407,
                                  pad_token_id=1, **kw)).eval()

    first = None if refiner else clip(CLIPTextModel, "quick_gelu", 32)
    second = clip(CLIPTextModelWithProjection, "gelu", 48, projection_dim=16)
    extra = {"force_zeros_for_empty_prompt": not refiner, "requires_aesthetics_score": refiner}
    return Components(unet, vae, first, None if refiner else load_tokenizer(None, "sd1"), dict(XL_SCHEDULER), kind=kind,
                      source="tiny-" + kind, extra=extra, text_encoder_2=second, tokenizer_2=load_tokenizer(None, "sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl():
    return tiny_sdxl_components("sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner():
    return tiny_sdxl_components("sdxl_refiner", seed=1)


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint():
    return tiny_sdxl_components("sdxl_inpaint", seed=2)


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory, tiny_sdxl):
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(tiny_sdxl, tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_refiner_folder(tmp_path_factory, tiny_sdxl_refiner):
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(tiny_sdxl_refiner, tmp_path_factory.mktemp("models") / "tiny-sdxl-refiner")


@pytest.fixture(scope="session")
def tiny_sdxl_inpaint_folder(tmp_path_factory, tiny_sdxl_inpaint):
    from latentdiff.checkpoints import save_diffusers_folder

    return save_diffusers_folder(tiny_sdxl_inpaint, tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint")
