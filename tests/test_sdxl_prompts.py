"""A1111's prompt syntax on SDXL's two encoders: emphasis (mean restored per encoder and chunk), BREAK, embeddings."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from helpers import ids, weighted_chunk
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



def by_hand(tok, text, parts):
    """A1111's emphasis, written out for one chunk of one encoder: penultimate states × weights, mean restored."""
    ids77, w77 = weighted_chunk(tok, parts)
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


def test_sdxl_embedding_pair_gives_diffusers_image(tmp_path, tiny_sdxl_folder, tiny_sdxl):
    """An SDXL clip_l/clip_g pair by name in prompt and negative: the image diffusers draws after loading each half into
    its encoder and tokenizer (as diffusers documents for SDXL embeddings)."""
    import numpy as np
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file

    from latentdiff import LatentDiffusionPipeline
    from latentdiff.pipelines.samplers import make_scheduler

    g = torch.Generator().manual_seed(11)
    path = tmp_path / "xltok.safetensors"
    save_file({"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 48, generator=g)}, path)
    prompt, kw = "a photo of xltok on a (table:1.0)", dict(num_inference_steps=4, guidance_scale=5.0, height=64, width=64)
    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_folder), local_files_only=True, add_watermarker=False)
    ref.scheduler = make_scheduler("euler", tiny_sdxl.scheduler_config)
    ref.set_progress_bar_config(disable=True)
    pair = load_file(path)
    ref.load_textual_inversion(pair["clip_l"], token="xltok", text_encoder=ref.text_encoder, tokenizer=ref.tokenizer)
    ref.load_textual_inversion(pair["clip_g"], token="xltok", text_encoder=ref.text_encoder_2, tokenizer=ref.tokenizer_2)
    want = ref("a photo of xltok on a table", negative_prompt="xltok", generator=[torch.Generator().manual_seed(3)], **kw).images[0]

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, device="cpu", dtype="fp32")
    assert pipe.load_embeddings(path) == ["xltok"]
    got = pipe(prompt, "xltok", sampler="euler", seed=3, progress=False, **kw)
    px = lambda im: np.asarray(im, dtype=np.int16)  # noqa: E731
    diff = np.abs(px(got.images[0]) - px(want))
    assert diff.max() <= 2, diff.max()
    plain = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, device="cpu", dtype="fp32")(
        prompt, "xltok", sampler="euler", seed=3, progress=False, **kw).images[0]
    assert np.abs(px(plain) - px(got.images[0])).mean() > 1  # the embedding changed the picture
    assert got.params[0].extra["TI hashes"].startswith("xltok: ")


def test_prompt_editing_equals_diffusers_switching_prompts_at_the_step(tiny_sdxl_folder, tiny_sdxl):
    """`[red fox:blue cat:0.5]` over 6 steps: A1111 keeps the first text through step int(0.5·6) = 3 (0-based, its
    reconstruct_cond_batch), so diffusers switches context and pooled text in callback_on_step_end after step 3.
    Compared on the final latents: the tiny model's late steps hardly move pixels."""
    from diffusers import StableDiffusionXLPipeline

    from latentdiff import LatentDiffusionPipeline
    from latentdiff.pipelines.samplers import make_scheduler
    from latentdiff.pipelines.sdxl import encode_texts

    kw = dict(num_inference_steps=6, guidance_scale=5.0, height=64, width=64)
    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_folder), local_files_only=True, add_watermarker=False)
    ref.scheduler = make_scheduler("euler", tiny_sdxl.scheduler_config)
    ref.set_progress_bar_config(disable=True)
    b, b_neg, b_pooled, b_neg_pooled = ref.encode_prompt("a blue cat in snow", device="cpu", negative_prompt="blurry")

    def switch(pipe, i, t, kwargs):
        if i == 3:
            return {"prompt_embeds": torch.cat([b_neg, b]), "add_text_embeds": torch.cat([b_neg_pooled, b_pooled])}
        return {}
    want = ref("a red fox in snow", negative_prompt="blurry", generator=[torch.Generator().manual_seed(5)],
               callback_on_step_end=switch, callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"],
               output_type="latent", **kw).images  # (1, 4, 8, 8)

    pipe = LatentDiffusionPipeline.from_pretrained(tiny_sdxl_folder, device="cpu", dtype="fp32")

    def final_latents(prompt):
        last = []
        pipe(prompt, "blurry", sampler="euler", seed=5, progress=False, callback=lambda i, n, x: last.append(x.clone()), **kw)
        return last[-1]

    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["text_embeds"].clone()), with_kwargs=True)
    try:
        got = final_latents("a [red fox:blue cat:0.5] in snow")
    finally:
        hook.remove()
    err = (got - want).abs().max().item()
    assert err < 1e-4, err
    fox, cat = (encode_texts(pipe, [p], ["blurry"], True, 0)[1] for p in ("a red fox in snow", "a blue cat in snow"))
    assert [("fox" if torch.equal(s, fox) else "cat" if torch.equal(s, cat) else "?") for s in seen] == ["fox"] * 4 + ["cat"] * 2
    for text in ("a red fox in snow", "a blue cat in snow"):  # both texts reach the latents, far beyond the parity error
        gap = (final_latents(text) - got).abs().max().item()
        assert gap > 100 * max(err, 1e-6)


def test_refiner_refuses_prompt_editing_in_one_line(tiny_sdxl, tiny_sdxl_refiner):
    from latentdiff import LatentDiffusionPipeline
    from latentdiff.errors import LatentDiffError

    base = LatentDiffusionPipeline(tiny_sdxl, device="cpu", dtype="fp32")
    refiner = LatentDiffusionPipeline(tiny_sdxl_refiner, device="cpu", dtype="fp32")
    with pytest.raises(LatentDiffError, match="do not cross the refiner hand-off"):
        base("a [cat:dog:0.5]", refiner=refiner, num_inference_steps=4, sampler="euler", seed=1, progress=False)
