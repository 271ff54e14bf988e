"""Our pipeline draws diffusers' StableDiffusionPipeline's pixels from the same folder, seed and scheduler."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from latentdiff.errors import LatentDiffError
from latentdiff.models.text import encode_prompts
from latentdiff.pipelines.samplers import SAMPLERS, make_scheduler
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

PROMPT, NEGATIVE = "a cat in a spacesuit, studio light", "blurry"


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def reference(folder, components, sampler, **kwargs):
    ref = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler(sampler, components.scheduler_config)
    seed = kwargs.pop("seed")
    return ref(generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


@pytest.fixture(scope="module")
def target_pipe(tiny_folder, parity_target, pipe):
    """Ours on `--device`/`--dtype` (the fp32 CPU `pipe` by default)."""
    if (parity_target.device.type, parity_target.dtype_name) == ("cpu", "fp32"):
        return pipe
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype=parity_target.dtype_name, device=parity_target.device)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a", "ddim", "pndm"])
def test_matches_diffusers_sd1(target_pipe, parity_target, tiny_folder, tiny_sd1, sampler):
    """diffusers in fp32 on the CPU is the answer: ≤ 2/255 in fp32; within the target's budget in fp16/bf16."""
    want = reference(tiny_folder, tiny_sd1, sampler, prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5,
                     guidance_scale=6.0, height=64, width=64, seed=7)[0]
    got = target_pipe(PROMPT, NEGATIVE, num_inference_steps=5, guidance_scale=6.0, sampler=sampler, seed=7,
                      progress=False).images[0]
    assert got.size == (64, 64)
    diff = np.abs(pixels(want) - pixels(got))
    assert diff.max() <= parity_target.pixels[0] and diff.mean() <= parity_target.pixels[1]
    assert pixels(got).std() > 5  # a real picture, not a flat field


def test_matches_diffusers_sd2_v_prediction_with_rescale(tiny_folder_sd2, tiny_sd2):
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder_sd2, dtype="fp32")
    assert pipe.components.prediction_type == "v_prediction"
    kw = dict(num_inference_steps=4, guidance_scale=5.0, guidance_rescale=0.7)
    want = reference(tiny_folder_sd2, tiny_sd2, "euler", prompt=PROMPT, height=64, width=96, seed=3, **kw)[0]
    got = pipe(PROMPT, sampler="euler", seed=3, height=64, width=96, progress=False, **kw).images[0]
    assert got.size == (96, 64)
    assert np.abs(pixels(want) - pixels(got)).max() <= 2


def test_no_guidance_and_unconditional_match(pipe, tiny_folder, tiny_sd1):
    want = reference(tiny_folder, tiny_sd1, "ddim", prompt="", num_inference_steps=3, guidance_scale=1.0, height=64, width=64, seed=1)[0]
    got = pipe("", num_inference_steps=3, guidance_scale=1.0, sampler="ddim", seed=1, progress=False).images[0]
    assert np.abs(pixels(want) - pixels(got)).max() <= 2


def test_batch_image_i_is_seed_plus_i(pipe):
    batch = pipe(PROMPT, num_inference_steps=3, sampler="euler_a", seed=10, num_images=3, progress=False)
    assert [p.seed for p in batch.params] == [10, 11, 12]
    alone = pipe(PROMPT, num_inference_steps=3, sampler="euler_a", seed=12, progress=False).images[0]
    assert np.abs(pixels(batch.images[2]) - pixels(alone)).max() <= 2
    assert np.abs(pixels(batch.images[0]) - pixels(batch.images[1])).mean() > 1


def test_clip_skip_uses_the_penultimate_layer_normed(tiny_sd1):
    # diffusers 0.42's own clip_skip path fails on transformers 5 (no .text_model), so check its formula by hand.
    tok, text = tiny_sd1.tokenizer, tiny_sd1.text_encoder
    ids = tok([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        want = text.final_layer_norm(text(ids, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(encode_prompts(tok, text, [PROMPT], clip_skip=1), want)


def test_long_prompts_are_chunked_not_cut(tiny_sd1):
    tok, text = tiny_sd1.tokenizer, tiny_sd1.text_encoder
    long_prompt = ", ".join(["a red cat"] * 30)  # 119 tokens → two chunks
    emb = encode_prompts(tok, text, [long_prompt, "short"])
    assert emb.shape == (2, 154, text.config.hidden_size)
    # The first chunk is the first 75 tokens encoded alone; the short prompt is padded with an empty chunk.
    ids = tok(long_prompt, add_special_tokens=False).input_ids
    first = tok.decode(ids[:75])
    torch.testing.assert_close(emb[0, :77], encode_prompts(tok, text, [first])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1, 77:], encode_prompts(tok, text, [""])[0])


def test_short_prompt_embeddings_equal_diffusers_encoding(tiny_sd1):
    tok, text = tiny_sd1.tokenizer, tiny_sd1.text_encoder
    ids = tok(["a photo of a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        want = text(ids)[0]
    assert torch.equal(encode_prompts(tok, text, ["a photo of a cat"]), want)


def test_every_sampler_runs(pipe):
    for name in SAMPLERS:
        img = pipe("x", num_inference_steps=2, sampler=name, seed=0, progress=False).images[0]
        assert pixels(img).shape == (64, 64, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(width=60), "width must be a positive multiple of 8"),
    (dict(height=0), "height must be a positive multiple of 8"),
    (dict(num_inference_steps=0), "steps must be a positive integer"),
    (dict(sampler="k_lms_turbo"), "unknown sampler 'k_lms_turbo'"),
])
def test_bad_arguments(pipe, kwargs, message):
    with pytest.raises(LatentDiffError, match=message):
        pipe("x", progress=False, **kwargs)


def test_bf16_draws_nearly_the_same_picture(tiny_folder):
    fp32 = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")
    bf16 = LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="bf16")
    a = fp32(PROMPT, num_inference_steps=4, seed=5, progress=False).images[0]
    b = bf16(PROMPT, num_inference_steps=4, seed=5, progress=False).images[0]
    assert np.abs(pixels(a) - pixels(b)).mean() <= 4


def test_sampling_records_no_autograd_graph(pipe):
    """Every U-Net call of a generation runs with gradients off (no graph kept across the steps)."""
    seen = []
    handle = pipe.unet.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.requires_grad)))
    try:
        pipe("a cat", num_inference_steps=2, seed=0, progress=False)
    finally:
        handle.remove()
    assert seen and set(seen) == {(False, False)}


def test_the_modes_are_methods_with_explicit_signatures():
    import inspect

    import latentdiff
    from latentdiff import pipelines
    from latentdiff.pipelines.hires import hires_fix

    assert latentdiff.LatentDiffusionPipeline is pipelines.LatentDiffusionPipeline is LatentDiffusionPipeline
    for mode in (LatentDiffusionPipeline.__call__, LatentDiffusionPipeline.img2img, LatentDiffusionPipeline.inpaint, hires_fix):
        params = inspect.signature(mode).parameters.values()
        assert mode.__doc__ and not any(p.kind is p.VAR_KEYWORD for p in params), mode.__name__
        assert {"num_inference_steps", "guidance_scale", "sampler", "seed", "controls"} <= {p.name for p in params}
