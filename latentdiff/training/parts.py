"""The parts from-scratch training builds: the models (VAE, text encoder, their training wrappers), caption tokenizing,
and turning trained parts into pipeline components and sample grids (the pixel cache is latentdiff/data/pixels.py)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from ..defaults import DEFAULT_SAMPLER
from ..fileio import atomic_write
from ..imaging import grid, to_unit
from ..models.unet import UNet
from ..runtime import default_device
from ..data.dataset import CaptionSampler, Record
from .config import TextConfig, VAEConfig

# The scheduler exported models carry (SD's scaled-linear DDPM betas, sampled with PNDM by default).
SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}


# -- models ----------------------------------------------------------------------------------------------------------
def build_vae(c: VAEConfig, resolution: int):
    from diffusers import AutoencoderKL

    n = len(c.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=c.latent_channels,
                         block_out_channels=tuple(c.block_out_channels), down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=c.layers_per_block,
                         norm_num_groups=c.norm_num_groups, sample_size=resolution)


def build_text_encoder(c: TextConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                                       num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                                       max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
                                       eos_token_id=49407, pad_token_id=49407))


class Denoiser(nn.Module):
    """Text encoder + U-Net as one module, so one optimizer and one DDP wrapper train them jointly."""

    def __init__(self, unet: UNet, text_encoder: nn.Module):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, latents: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor,
                x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        context = self.text_encoder(input_ids)[0]  # (B, 77, D)
        return self.unet(latents, t, context, x_self_cond=x_self_cond)


class VAETrainee(nn.Module):
    """AutoencoderKL with a training forward (so DDP sees one call): x → (reconstruction, KL per pixel-channel)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        y = self.vae.decode(post.sample()).sample  # (b, 3, R, R)
        return y, post.kl() / x[0].numel()  # (b,)


class DecoderTrainee(nn.Module):
    """The VAE with its encoder frozen: (unscaled) latents → pixels, so the latent space the U-Net learns stays fixed."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample  # (b, 3, R, R)


# -- captions ------------------------------------------------------------------------------------------------------
def captions_for(records: list[Record], idx: list[int], sampler: CaptionSampler, seed: int, step: int) -> list[str]:
    return [sampler(records[i], random.Random(f"{seed}:{step}:{j}:{i}")) for j, i in enumerate(idx)]


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) ids padded as the pipeline pads at inference."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


class TokenCache:
    """tokenize() with a memory: the caption space (labels × templates + tags) is finite, so each caption is tokenized once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self.ids})
        if new:
            self.ids.update(zip(new, tokenize(self.tokenizer, new)))
        return torch.stack([self.ids[c] for c in captions])  # (B, 77)


# -- components and samples ----------------------------------------------------------------------------------------
def make_components(cfg, vae, unet: UNet, text_encoder, scale: float):
    """Components for the pipeline/export from trained parts."""
    from ..checkpoints import Components
    from ..checkpoints.loader import load_tokenizer

    vae.register_to_config(scaling_factor=scale)
    return Components(unet.eval(), vae.eval(), text_encoder.eval(), load_tokenizer(None, "sd1"), dict(SCHEDULER),
                      kind="sd1", source=str(cfg.output_dir))


def sample_grid(components, prompts: list[str], path: Path, *, steps: int = 20, guidance: float = 5.0, seed: int = 0) -> None:
    """Generate one image per prompt with the pipeline and save them side by side."""
    from ..pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline(components, device=default_device(), dtype=torch.float32)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, sampler=DEFAULT_SAMPLER, seed=seed, progress=False)
    save_grid(to_unit(out.images), path, cols=len(prompts))


def save_grid(images: torch.Tensor, path: Path, cols: int) -> None:
    """Images in [0, 1] (N, 3, H, W) → one PNG grid, atomically."""
    image = grid(images, cols)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


