"""A1111's prompt syntax on SDXL's two encoders: emphasis (mean restored per encoder and chunk), BREAK, embeddings."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from latentdiff.models.sdxl_text import encode_sdxl


def with_xl_bias(components, bias: float = 0.5):
    """A copy whose encoders' penultimate hidden states have a nonzero mean (a bias on the layer that gives them):
    a fresh random CLIP's residual stream has mean ≈ 0, which makes A1111's mean restore divide by ~0."""
    encs = {}
    for name in ("text_encoder", "text_encoder_2"):
        text = copy.deepcopy(getattr(components, name))
        with torch.no_grad():
            getattr(text, "text_model", text).encoder.layers[-2].mlp.fc2.bias.fill_(bias)
        encs[name] = text
    return dataclasses.replace(components, **encs)


@pytest.fixture(scope="module")
def biased(tiny_sdxl):
    return with_xl_bias(tiny_sdxl)


def enc(c, prompts, **kw):
    return encode_sdxl([c.tokenizer, c.tokenizer_2], [c.text_encoder, c.text_encoder_2], prompts, **kw)


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def by_hand(tok, text, parts):
    """A1111's emphasis, written out for one chunk of one encoder: penultimate states × weights, mean restored."""
    tokens, weights = [], []
    for t, w in parts:
        tokens += ids(tok, t)
        weights += [w] * len(ids(tok, t))
    pad = 77 - 2 - len(tokens)
    ids77 = torch.tensor([[tok.bos_token_id, *tokens, tok.eos_token_id] + [tok.pad_token_id] * pad])
    w77 = torch.tensor([1.0, *weights, 1.0] + [1.0] * pad)
    with torch.no_grad():
        out = text(ids77, output_hidden_states=True)
    z = out.hidden_states[-2]  # (1, 77, D)
    zw = z * w77[None, :, None]
    assert 0.1 < z.mean().abs() < 10 and 0.1 < zw.mean().abs() < 10  # a well-posed ratio (with_xl_bias)
    return zw * (z.mean() / zw.mean()), out[0]


def test_weighted_prompt_is_a1111s_formula_on_both_encoders(biased):
    ctx, pooled = enc(biased, ["a (red:1.5) cat on [a mat]"])
    parts = [("a ", 1.0), ("red", 1.5), (" cat on ", 1.0), ("a mat", 1 / 1.1)]
    want_l, _ = by_hand(biased.tokenizer, biased.text_encoder, parts)
    want_g, want_pooled = by_hand(biased.tokenizer_2, biased.text_encoder_2, parts)
    assert ctx.shape == (1, 77, 80)
    assert (ctx[..., :32] - want_l).abs().max().item() < 1e-6
    assert (ctx[..., 32:] - want_g).abs().max().item() < 1e-6
    assert (pooled - want_pooled).abs().max().item() < 1e-6  # the pooled text is not weighted (A1111)
    plain, plain_pooled = enc(biased, ["a red cat"])
    same, same_pooled = enc(biased, ["a (red:1) cat"])
    assert torch.equal(same, plain) and torch.equal(same_pooled, plain_pooled)  # weight 1: the plain prompt, bit for bit
    assert not torch.allclose(ctx, enc(biased, ["a red cat on a mat"])[0])


def test_break_and_comma_chunks_keep_their_own_mean(biased):
    ctx, pooled = enc(biased, ["(red:2) cat BREAK blue dog"])
    assert ctx.shape == (1, 154, 80)
    for sl, tok, text in ((slice(0, 32), biased.tokenizer, biased.text_encoder),
                          (slice(32, 80), biased.tokenizer_2, biased.text_encoder_2)):
        want, _ = by_hand(tok, text, [("red", 2.0), (" cat", 1.0)])
        assert (ctx[:, :77, sl] - want).abs().max().item() < 1e-6
    blue, _ = enc(biased, ["blue dog"])
    torch.testing.assert_close(ctx[:, 77:], blue, rtol=0, atol=1e-6)  # its own chunk, its own mean
    torch.testing.assert_close(pooled, enc(biased, ["(red:2) cat"])[1], rtol=0, atol=1e-6)  # pooled from the first chunk
    words = "x " + ", ".join(["red big cat"] * 25)  # 100 tokens, a comma every fourth: the last before 75 is token 72
    long, _ = enc(biased, [words])
    assert len(ids(biased.tokenizer, words)) > 75 and long.shape[1] == 154
    # the first chunk ends after the last comma before token 75 (A1111's backtrack), for both encoders alike
    toks = ids(biased.tokenizer, words)
    comma = max(i for i, t in enumerate(toks[:75]) if t == toks[4])
    assert comma == 72
    first, _ = enc(biased, [biased.tokenizer.decode(toks[:comma + 1])])
    torch.testing.assert_close(long[:, :77], first, rtol=0, atol=1e-6)
