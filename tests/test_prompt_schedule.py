"""A1111's prompt editing [from:to:when] and alternation [a|b]: the schedules its parser gives (A1111's own doctest rows
for 10 steps, then more from its grammar), and txt2img conditioning that changes at the step A1111 changes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdiff.models.prompt_schedule import prompt_schedule, text_at_step
from latentdiff.pipelines.text_to_image import LatentDiffusionPipeline

ALT = lambda a, b: [[i, a if i % 2 else b] for i in range(1, 11)]  # noqa: E731
TABLE = [  # prompt → [(last step, text)] for 10 steps
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]]),         # A1111 ≥ 1.6 reads the fraction after the point
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", ALT("a", "(b:1.1)")),
    ("[fe|]male", ALT("female", "male")),
    ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
    # more rows from the grammar
    ("a [cat::4] b", [[4, "a cat b"], [10, "a  b"]]),       # [from::when] removes
    ("[cat:dog:20]", [[10, "cat"]]),                         # a step past the end is the end
    ("[cat:dog:0]", [[10, "dog"]]),                          # step 0 never shows `from`
    ("(x:1.2) [a:b:5]", [[5, "(x:1.2) a"], [10, "(x:1.2) b"]]),
    ("a | b", [[10, "a | b"]]),                              # `|` outside brackets: not readable, used as written
    ("[a:b]", [[10, "[a:b]"]]),                              # `when` must be a number
    ("[a:b|c:3]", [[10, "[a:b|c:3]"]]),
]


@pytest.mark.parametrize("prompt,want", TABLE, ids=[p for p, _ in TABLE])
def test_schedules_as_a1111(prompt, want):
    assert [list(e) for e in prompt_schedule(prompt, 10)] == want


def test_text_at_step_is_a1111s_pick():
    s = prompt_schedule("[cat:dog:3]", 10)
    assert [text_at_step(s, i) for i in range(10)] == ["cat"] * 4 + ["dog"] * 6  # steps 0..3 (0-based) are ≤ 3
    alt = prompt_schedule("[a|b]", 4)
    assert [text_at_step(alt, i) for i in range(4)] == ["a", "a", "b", "a"]


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return LatentDiffusionPipeline.from_pretrained(tiny_folder, dtype="fp32")


def test_txt2img_conditioning_changes_at_the_step(pipe):
    seen = []
    unet = pipe.unet
    hook = unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    try:
        out = pipe("a [cat:dog:2]", "blurry", num_inference_steps=5, sampler="euler", seed=1, progress=False)
    finally:
        hook.remove()
    with torch.no_grad():
        cat = pipe.encode_text(["a cat"], ["blurry"], True)
        dog = pipe.encode_text(["a dog"], ["blurry"], True)
    assert [("cat" if torch.equal(c, cat) else "dog" if torch.equal(c, dog) else "?") for c in seen] == \
        ["cat"] * 3 + ["dog"] * 2
    assert out.params[0].prompt == "a [cat:dog:2]"  # recorded as typed
    plain = pipe("a cat", "blurry", num_inference_steps=5, sampler="euler", seed=1, progress=False).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(out.images[0]))


def test_img2img_conditioning_changes_over_the_steps_that_run(pipe):
    from PIL import Image

    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
    try:
        pipe.img2img("a [cat:dog:1]", Image.new("RGB", (64, 64), (90, 120, 200)), strength=0.5, num_inference_steps=8,
                     sampler="euler", seed=1, progress=False)
    finally:
        hook.remove()
    with torch.no_grad():
        cat, dog = (pipe.encode_text([f"a {w}"], [""], True) for w in ("cat", "dog"))
    assert [("cat" if torch.equal(c, cat) else "dog" if torch.equal(c, dog) else "?") for c in seen] == ["cat"] * 2 + ["dog"] * 2
