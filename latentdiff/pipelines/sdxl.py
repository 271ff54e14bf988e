"""SDXL through the ordinary pipeline: its text conditioning as a U-Net wrapper, and the refiner hand-off's switch point.

`condition` returns what `LatentDiffusionPipeline.condition` returns for SD1/SD2, (context, model), with the model
being the U-Net with SDXL's added conditioning (pooled text, micro-conditioning numbers) bound, so the samplers,
guidance and img2img/inpaint code are the same for every family. The base → refiner hand-off itself is
`pipelines.text_to_image.refine`.
"""

from __future__ import annotations

import torch

from ..errors import LatentDiffError
from ..models.sdxl_text import MicroConditioning, encode_sdxl


class AddedCondUNet:
    """The U-Net called as unet(x, t, context, ...), with SDXL's added_cond_kwargs for the [uncond; cond] batch bound."""

    def __init__(self, unet, text_embeds: torch.Tensor, time_ids: torch.Tensor):
        self.unet, self.text_embeds, self.time_ids = unet, text_embeds, time_ids  # (n, P), (n, k)

    config = property(lambda self: self.unet.config)
    dtype = property(lambda self: self.unet.dtype)
    device = property(lambda self: self.unet.device)

    def __call__(self, x: torch.Tensor, t, context: torch.Tensor, x_self_cond: torch.Tensor | None = None,
                 down_block_additional_residuals: list[torch.Tensor] | None = None,
                 mid_block_additional_residual: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net's call (models.unet.UNet.forward) with the added conditioning filled in."""
        added = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return self.unet(x, t, context, x_self_cond=x_self_cond, added_cond_kwargs=added,
                         down_block_additional_residuals=down_block_additional_residuals,
                         mid_block_additional_residual=mid_block_additional_residual)


def encoders(pipe) -> tuple[list, list]:
    """(tokenizers, text encoders) in SDXL order: CLIP ViT-L then bigG for the base, bigG alone for the refiner."""
    c = pipe.components
    pairs = [(c.tokenizer, c.text_encoder), (c.tokenizer_2, c.text_encoder_2)]
    pairs = [(t, e) for t, e in pairs if e is not None]
    return [t for t, _ in pairs], [e for _, e in pairs]


@torch.no_grad()
def encode_texts(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([uncond; cond] or cond context (n, T, D), pooled text (n, P)) under A1111's prompt syntax and the pipe's
    textual-inversion embeddings (an SDXL pair's clip_l half for CLIP ViT-L, clip_g for bigG).

    An empty negative prompt gives all-zero negative embeddings when the model says force_zeros_for_empty_prompt
    (SDXL base; diffusers does this for negative_prompt=None).
    """
    from ..checkpoints.embeddings import vectors_for

    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
        raise LatentDiffError(f"--clip-skip must be an integer ≥ 0, got {clip_skip}")
    tokenizers, encs = encoders(pipe)
    keys = ["clip_l", "clip_g"][-len(encs):]  # the refiner's one encoder is bigG
    vectors = [vectors_for(getattr(pipe, "embeddings", {}), e.config.hidden_size, k) for e, k in zip(encs, keys)]
    texts = negatives + prompts if guided else prompts
    context, pooled = encode_sdxl(tokenizers, encs, texts, clip_skip=clip_skip, embeddings=vectors)  # (n, T, D), (n, P)
    if guided and pipe.components.extra.get("force_zeros_for_empty_prompt", True):
        empty = torch.tensor([n == "" for n in negatives] + [False] * len(prompts), device=context.device)
        context = context.masked_fill(empty[:, None, None], 0.0)
        pooled = pooled.masked_fill(empty[:, None], 0.0)
    return context.to(pipe.dtype), pooled.to(pipe.dtype)


@torch.no_grad()
def condition(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int, size: tuple[int, int],
              micro: MicroConditioning | dict | None = None) -> tuple[torch.Tensor, AddedCondUNet]:
    """([uncond; cond] context (2B, T, D) or cond (B, T, D), the U-Net with pooled text and time ids bound)."""
    height, width = size
    opts = pipe.components.extra
    micro = MicroConditioning.of(micro)
    context, pooled = encode_texts(pipe, prompts, negatives, guided, clip_skip)  # (n, T, D), (n, P)
    b = len(prompts)
    neg_ids, pos_ids = micro.time_ids(height, width, opts.get("requires_aesthetics_score", False))
    cfg = pipe.unet.config
    want = cfg.projection_class_embeddings_input_dim
    if cfg.addition_time_embed_dim * len(pos_ids) + pooled.shape[-1] != want:
        raise LatentDiffError(f"the U-Net's added embedding takes {want} numbers, but {len(pos_ids)} micro-conditioning numbers "
                              f"and a {pooled.shape[-1]}-d pooled text give {cfg.addition_time_embed_dim * len(pos_ids) + pooled.shape[-1]} "
                              "(requires_aesthetics_score in model_index.json decides 5 or 6 numbers)")
    rows = ([neg_ids] * b if guided else []) + [pos_ids] * b
    time_ids = torch.tensor(rows, dtype=pipe.dtype, device=pipe.device)  # (n, 5 or 6)
    return context, AddedCondUNet(pipe.unet, pooled, time_ids)


def switch_timestep(scheduler, fraction: float) -> int:
    """diffusers' denoising_end/denoising_start cutoff: the base runs timesteps ≥ this, the refiner those below it."""
    n = scheduler.config.num_train_timesteps
    return int(round(n - fraction * n))


def check_switch(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise LatentDiffError(f"--refiner-switch must be in (0, 1), got {fraction}")
    return float(fraction)
