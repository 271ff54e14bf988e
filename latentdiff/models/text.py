"""Prompt → CLIP token chunks → text embeddings (B, 77·k, D), with A1111's prompt syntax and chunking of long prompts."""

from __future__ import annotations

from typing import Callable

import torch

from .prompt_syntax import TokenFixes, chunk_ids, chunk_prompts, chunk_weights, emphasize


def token_chunks(tokenizer, prompt: str) -> list[list[int]]:
    """Split a prompt's tokens (without BOS/EOS) into chunks of at most 75; an empty prompt is one empty chunk."""
    size = tokenizer.model_max_length - 2
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return [ids[i:i + size] for i in range(0, len(ids), size)] or [[]]


def clip_hidden(text_encoder, input_ids: torch.Tensor, clip_skip: int = 0) -> torch.Tensor:
    """The encoder's last hidden states (N, 77, D), or with clip_skip = n the n-th last layer's, final-normed (SD1/SD2)."""
    if not clip_skip:
        return text_encoder(input_ids)[0]
    out = text_encoder(input_ids, output_hidden_states=True)
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers ≥ 5 dropped .text_model
    return final_norm(out.hidden_states[-(clip_skip + 1)])


@torch.no_grad()
def encode_weighted(tokenizer, text_encoder, prompts: list[str], forward: Callable, *,
                    embeddings: dict[str, torch.Tensor] | None = None, syntax: bool = True):
    """Any CLIP encoder under A1111's prompt syntax: (hidden (B, 77·k, D), extra of chunk 0 or None).

    `forward(input_ids (N, 77))` returns hidden states (N, 77, D), or (hidden, extra) where extra (N, ...) is e.g.
    SDXL's pooled output, taken from each prompt's first chunk as A1111 does. `embeddings`: textual-inversion vectors
    {name: (n, D)} for this encoder. Weights follow A1111's emphasis (prompt_syntax.emphasize), chunk by chunk.
    """
    embeddings = embeddings or {}
    chunked = chunk_prompts(tokenizer, prompts, {n: v.shape[0] for n, v in embeddings.items()}, syntax=syntax)
    k = len(chunked[0])
    rows = [c for chunks in chunked for c in chunks]
    device = text_encoder.device
    input_ids = torch.tensor([chunk_ids(tokenizer, c.tokens) for c in rows], device=device)  # (B·k, 77)
    weights = torch.tensor([chunk_weights(tokenizer, c) for c in rows], device=device)       # (B·k, 77)
    fixes = [(r, 1 + offset, embeddings[name]) for r, c in enumerate(rows) for offset, name in c.fixes]
    with TokenFixes(text_encoder, fixes):
        out = forward(input_ids)
    hidden, extra = out if isinstance(out, tuple) else (out, None)
    hidden = emphasize(hidden, weights)  # (B·k, 77, D)
    if extra is not None:
        extra = extra.reshape(len(prompts), k, *extra.shape[1:])[:, 0]
    return hidden.reshape(len(prompts), k * hidden.shape[1], hidden.shape[2]), extra  # (B, 77·k, D)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], *, clip_skip: int = 0,
                   embeddings: dict[str, torch.Tensor] | None = None, syntax: bool = True) -> torch.Tensor:
    """Embed prompts (SD1/SD2); every prompt is padded with empty chunks to the longest one's chunk count.

    A plain prompt of up to 75 tokens gives exactly diffusers' embeddings (B, 77, D). Longer prompts are cut into
    75-token chunks as A1111 cuts them (at a comma when one is near), each encoded on its own with BOS/EOS and
    concatenated along the sequence (B, 77·k, D); cross-attention accepts any sequence length. `clip_skip` = n uses
    the n-th last hidden layer. A1111's emphasis, BREAK and embeddings apply unless `syntax` is False.
    """
    return encode_weighted(tokenizer, text_encoder, prompts, lambda ids: clip_hidden(text_encoder, ids, clip_skip),
                           embeddings=embeddings, syntax=syntax)[0]
