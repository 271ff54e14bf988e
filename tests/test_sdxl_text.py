"""SDXL text conditioning: diffusers' encode_prompt for short prompts, chunks, clip skip, zeroed negatives, time ids."""

import pytest
import torch

from latentdiff import LatentDiffusionPipeline
from latentdiff.errors import LatentDiffError
from latentdiff.models.sdxl_text import MicroConditioning, encode_sdxl

LONG = " ".join(["red cat"] * 50)  # 100 tokens: two chunks


@pytest.fixture(scope="module")
def xl(tiny_sdxl):
    return LatentDiffusionPipeline(tiny_sdxl, device="cpu", dtype="fp32")


def enc(c, prompts, clip_skip=0):
    return encode_sdxl([c.tokenizer, c.tokenizer_2], [c.text_encoder, c.text_encoder_2], prompts, clip_skip=clip_skip)


def test_short_prompt_equals_diffusers_encode_prompt(tiny_sdxl_folder, tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl_folder), local_files_only=True, add_watermarker=False)
    want, want_neg, want_pooled, want_neg_pooled = ref.encode_prompt("a small house", device="cpu", negative_prompt="ugly")
    (ctx, pooled), (neg, neg_pooled) = enc(tiny_sdxl, ["a small house"]), enc(tiny_sdxl, ["ugly"])
    assert ctx.shape == (1, 77, 80) and pooled.shape == (1, 16)
    for a, b in ((ctx, want), (pooled, want_pooled), (neg, want_neg), (neg_pooled, want_neg_pooled)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_long_prompts_are_chunked_pooled_from_the_first_chunk(tiny_sdxl):
    ctx, pooled = enc(tiny_sdxl, [LONG, "short"])
    assert ctx.shape == (2, 154, 80)  # two 77-token chunks per prompt, the short one padded with an empty chunk
    first_ids = tiny_sdxl.tokenizer_2(LONG, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        first = tiny_sdxl.text_encoder_2(first_ids, output_hidden_states=True)
    torch.testing.assert_close(pooled[0], first.text_embeds[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ctx[0, :77, 32:], first.hidden_states[-2][0], rtol=0, atol=1e-5)
    assert (ctx[0, 77:] - ctx[0, :77]).abs().max() > 1e-3  # the second chunk carries the rest of the words


def test_clip_skip_moves_clip_l_only_as_a1111(tiny_sdxl):
    base, pooled = enc(tiny_sdxl, ["a tree"])
    same, _ = enc(tiny_sdxl, ["a tree"], clip_skip=1)  # A1111 "Clip skip 2" is SDXL's own penultimate layer
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    skipped, pooled2 = enc(tiny_sdxl, ["a tree"], clip_skip=2)
    ids = tiny_sdxl.tokenizer("a tree", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h = tiny_sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-3]
    torch.testing.assert_close(skipped[..., :32], h, rtol=0, atol=1e-6)
    torch.testing.assert_close(skipped[..., 32:], base[..., 32:], rtol=0, atol=0)  # bigG unchanged
    torch.testing.assert_close(pooled2, pooled, rtol=0, atol=0)
    with pytest.raises(LatentDiffError, match="beyond the text encoder"):
        enc(tiny_sdxl, ["a tree"], clip_skip=3)


def test_empty_negative_is_zeros_when_the_model_says_so(xl):
    ctx, unet = xl.condition(["a dog", "a cat"], ["", "blurry"], True, 0, (64, 64))
    assert ctx.shape == (4, 77, 80) and unet.text_embeds.shape == (4, 16) and unet.time_ids.shape == (4, 6)
    assert ctx[0].abs().max() == 0 and unet.text_embeds[0].abs().max() == 0  # "" → zeros (force_zeros_for_empty_prompt)
    assert ctx[1].abs().max() > 0  # "blurry" is encoded
    assert unet.time_ids[0].tolist() == [64, 64, 0, 0, 64, 64]
    xl.components.extra["force_zeros_for_empty_prompt"] = False
    try:
        ctx, _ = xl.condition(["a dog"], [""], True, 0, (64, 64))
        assert ctx[0].abs().max() > 0
    finally:
        xl.components.extra["force_zeros_for_empty_prompt"] = True


def test_micro_conditioning_numbers():
    m = MicroConditioning(original_size=(512, 768), crops_coords_top_left=(8, 4), negative_original_size=(256, 256))
    assert m.time_ids(1024, 896, aesthetic=False) == ([256, 256, 8, 4, 1024, 896], [512, 768, 8, 4, 1024, 896])
    assert MicroConditioning().time_ids(64, 32, aesthetic=True) == ([64, 32, 0, 0, 2.5], [64, 32, 0, 0, 6.0])
    with pytest.raises(LatentDiffError, match="unknown micro-conditioning key 'size'"):
        MicroConditioning.of({"size": (1, 2)})
    with pytest.raises(LatentDiffError, match="two numbers"):
        MicroConditioning(original_size=(1, 2, 3)).time_ids(64, 64, False)
