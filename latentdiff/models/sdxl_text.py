"""SDXL text conditioning: two CLIP encoders → context (B, 77·k, D1+D2) and pooled text (B, P), plus micro-conditioning.

SDXL (Podell et al. 2023, https://arxiv.org/abs/2307.01952 §2.1–2.2) concatenates the penultimate hidden states of
CLIP ViT-L (`CLIPTextModel`, 768) and OpenCLIP ViT-bigG (`CLIPTextModelWithProjection`, 1280) to a 2048-d context, and
feeds bigG's pooled, projected text embedding together with six size/crop numbers to the U-Net's added embedding.
The refiner has bigG alone and replaces the target size with an aesthetic score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import LatentDiffError
from .prompt_syntax import chunk_ids
from .text import encode_weighted, token_chunks

Size = tuple[int, int]  # (height, width), as diffusers orders them


@dataclass
class MicroConditioning:
    """SDXL's size/crop conditioning (§2.2); sizes are (height, width), None means the output's size."""

    original_size: Size | None = None                    # the size the "training image" had
    crops_coords_top_left: Size = (0, 0)                 # where it was cropped; (0, 0) gives centred subjects
    target_size: Size | None = None
    negative_original_size: Size | None = None           # None: the positive value (diffusers' defaults)
    negative_crops_coords_top_left: Size | None = None
    negative_target_size: Size | None = None
    aesthetic_score: float = 6.0                         # refiner only (requires_aesthetics_score)
    negative_aesthetic_score: float = 2.5

    @classmethod
    def of(cls, value: "MicroConditioning | dict | None") -> "MicroConditioning":
        if value is None:
            return cls()
        if isinstance(value, MicroConditioning):
            return value
        if not isinstance(value, dict):
            raise LatentDiffError(f"micro_conditioning must be a MicroConditioning or a dict, got {type(value).__name__}")
        unknown = [k for k in value if k not in cls.__dataclass_fields__]
        if unknown:
            raise LatentDiffError(f"unknown micro-conditioning key {unknown[0]!r} (known: {', '.join(cls.__dataclass_fields__)})")
        return cls(**value)

    def time_ids(self, height: int, width: int, aesthetic: bool) -> tuple[list[float], list[float]]:
        """(negative, positive) numbers: original + crop + target (base), or original + crop + score (refiner)."""
        orig = tuple(self.original_size or (height, width))
        target = tuple(self.target_size or (height, width))
        crop = tuple(self.crops_coords_top_left)
        n_orig = tuple(self.negative_original_size or orig)
        n_crop = tuple(self.negative_crops_coords_top_left or crop)
        n_target = tuple(self.negative_target_size or target)
        for name, v in (("original_size", orig), ("target_size", target), ("crops_coords_top_left", crop),
                        ("negative_original_size", n_orig), ("negative_target_size", n_target),
                        ("negative_crops_coords_top_left", n_crop)):
            if len(v) != 2:
                raise LatentDiffError(f"{name} must be two numbers (height, width), got {v}")
        if aesthetic:
            return [*n_orig, *n_crop, self.negative_aesthetic_score], [*orig, *crop, self.aesthetic_score]
        return [*n_orig, *n_crop, *n_target], [*orig, *crop, *target]


def hidden_layer(clip_skip: int, first_of_two: bool) -> int:
    """Which hidden state (from the end) an SDXL encoder gives: the penultimate, as SDXL was trained.

    `clip_skip` = n is A1111's "Clip skip" n+1 with its `sdxl_clip_l_skip` option: it moves CLIP ViT-L (the first
    of the base's two encoders) to hidden_states[-(n+1)], so n ≤ 1 is SDXL's own penultimate layer; bigG never moves.
    """
    return -(clip_skip + 1) if first_of_two and clip_skip >= 2 else -2


@torch.no_grad()
def encode_sdxl(tokenizers: list, encoders: list, prompts: list[str], *, clip_skip: int = 0,
                embeddings: list[dict[str, torch.Tensor]] | None = None, syntax: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (context (B, 77·k, ΣD), pooled (B, P)) with one or two encoders; the last one gives the pooled text.

    A plain prompt of up to 75 tokens gives exactly diffusers' embeddings. A1111's syntax applies to each encoder as
    A1111 applies it to both of SDXL's: emphasis (weights, then each chunk's mean restored per encoder), BREAK and
    comma-aware 75-token chunks, each encoded with BOS/EOS and concatenated along the sequence; the pooled text is
    the first chunk's. `embeddings`: per encoder, textual-inversion vectors {name: (n, D_i)} (an SDXL pair's
    clip_l / clip_g halves); a name is read as an embedding only where every encoder has vectors for it, so both
    encoders cut the same chunks (they share CLIP's vocabulary).
    """
    if clip_skip < 0:
        raise LatentDiffError(f"--clip-skip must be ≥ 0, got {clip_skip}")
    per_encoder = embeddings or [{} for _ in encoders]
    shared = set.intersection(*(set(v) for v in per_encoder)) if per_encoder else set()
    hidden, pooled = [], None
    for i, (tok, enc) in enumerate(zip(tokenizers, encoders)):
        layers = enc.config.num_hidden_layers
        layer = hidden_layer(clip_skip, i == 0 and len(encoders) == 2)
        if -layer > layers:
            raise LatentDiffError(f"--clip-skip {clip_skip} is beyond the text encoder's {layers} layers")

        def forward(ids: torch.Tensor, enc=enc, layer=layer):
            out = enc(ids, output_hidden_states=True)
            h = out.hidden_states[layer]  # (N, 77, D_i), penultimate: no final layer norm (as SDXL and A1111)
            return (h, out[0]) if out[0].ndim == 2 else h  # CLIPTextModelWithProjection: text_embeds (N, P)

        vectors = {n: v for n, v in per_encoder[i].items() if n in shared}
        h, extra = encode_weighted(tok, enc, prompts, forward, embeddings=vectors, syntax=syntax)  # (B, 77·k, D_i)
        if hidden and h.shape[1] != hidden[0].shape[1]:
            raise LatentDiffError("the SDXL text encoders cut the prompt into different chunk counts (mismatched tokenizers)")
        hidden.append(h)
        if extra is not None:
            pooled = extra  # (B, P), the first chunk's
    if pooled is None:
        raise LatentDiffError("SDXL needs a text encoder with a projection (CLIPTextModelWithProjection) for the pooled text")
    return torch.cat(hidden, dim=-1), pooled  # (B, 77·k, ΣD), (B, P)


def encode_sdxl_trainable(tokenizers: list, encoders: list, prompts: list[str], *,
                          clip_skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions → (context (B, 77, ΣD), pooled (B, P)) with one or two encoders; the last one gives the pooled text.

    Gradients flow (LoRA training of the text encoders); captions are plain text, no A1111 emphasis (as kohya's
    default). A caption of up to 75 tokens gives exactly diffusers' embeddings; a longer one is cut to its first 75
    tokens, as SD1/SD2 training cuts it (only that chunk is encoded: no forward pass is spent on the rest).
    """
    if clip_skip < 0:
        raise LatentDiffError(f"--clip-skip must be ≥ 0, got {clip_skip}")
    hidden, pooled = [], None
    for i, (tok, enc) in enumerate(zip(tokenizers, encoders)):
        layers = enc.config.num_hidden_layers
        layer = hidden_layer(clip_skip, i == 0 and len(encoders) == 2)
        if -layer > layers:
            raise LatentDiffError(f"--clip-skip {clip_skip} is beyond the text encoder's {layers} layers")
        ids = [chunk_ids(tok, token_chunks(tok, p)[0]) for p in prompts]  # the first 75-token chunk
        out = enc(torch.tensor(ids, device=enc.device), output_hidden_states=True)
        hidden.append(out.hidden_states[layer])  # (B, 77, D_i)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds (B, P)
            pooled = out[0]
    if pooled is None:
        raise LatentDiffError("SDXL needs a text encoder with a projection (CLIPTextModelWithProjection) for the pooled text")
    return torch.cat(hidden, dim=-1), pooled  # (B, 77, ΣD), (B, P)
