"""Prompt → CLIP token chunks → text embeddings (B, 77·k, D), with A1111-style chunking of long prompts."""

from __future__ import annotations

import torch


def token_chunks(tokenizer, prompt: str) -> list[list[int]]:
    """Split a prompt's tokens (without BOS/EOS) into chunks of at most 75; an empty prompt is one empty chunk."""
    size = tokenizer.model_max_length - 2
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return [ids[i:i + size] for i in range(0, len(ids), size)] or [[]]


def chunk_ids(tokenizer, chunk: list[int]) -> list[int]:
    """BOS + chunk + EOS, padded with the tokenizer's pad token to model_max_length (77), as diffusers pads."""
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], *, clip_skip: int = 0) -> torch.Tensor:
    """Embed prompts; every prompt is padded with empty chunks to the longest one's chunk count.

    A prompt of up to 75 tokens gives exactly diffusers' embeddings (B, 77, D). Longer prompts are cut into
    75-token chunks, each encoded on its own with BOS/EOS and concatenated along the sequence (B, 77·k, D),
    as A1111 does; cross-attention accepts any sequence length. `clip_skip` = n uses the n-th last hidden layer.
    """
    chunks = [token_chunks(tokenizer, p) for p in prompts]
    k = max(len(c) for c in chunks)
    ids = [chunk_ids(tokenizer, c[i] if i < len(c) else []) for c in chunks for i in range(k)]
    device = text_encoder.device
    input_ids = torch.tensor(ids, device=device)  # (B·k, 77)
    if clip_skip:
        out = text_encoder(input_ids, output_hidden_states=True)
        final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers ≥ 5 dropped .text_model
        hidden = final_norm(out.hidden_states[-(clip_skip + 1)])
    else:
        hidden = text_encoder(input_ids)[0]  # (B·k, 77, D)
    return hidden.reshape(len(prompts), k * hidden.shape[1], hidden.shape[2])  # (B, 77·k, D)
