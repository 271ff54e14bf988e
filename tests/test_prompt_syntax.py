"""A1111's prompt syntax: the runs its parser gives (a table written from its docs and by reading its parser), its
comma-aware chunking, and the emphasis formula on the encoder's output (to 1e-6)."""

from __future__ import annotations

import pytest
import torch

from helpers import ids, weighted_chunk
from conftest import with_text_bias
from latentdiff.errors import LatentDiffError
from latentdiff.models.prompt_syntax import chunk_prompt, parse_attention
from latentdiff.models.text import encode_prompts

# prompt → runs. The first eight are A1111's own docstring examples (prompt_parser.parse_prompt_attention), exactly.
TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("", [("", 1.0)]),
    ("((word))", [("word", 1.1 * 1.1)]),
    # the rest follow from the grammar: brackets, weights, escapes, BREAK and stray closers
    ("(word)", [("word", 1.1)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
    ("[unclosed", [("unclosed", 1 / 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 0.5 )", [("word", 0.5)]),               # spaces around the weight
    ("(x:-1)", [("x", -1.0)]),                        # negative weights are allowed
    ("(a:1.5:2)", [("a:1.5", 2.0)]),                  # only the last `:w)` is a weight
    ("((a:1.2) b)", [("a", 1.2 * 1.1), (" b", 1.1)]),
    ("(a [b] c:2)", [("a ", 2.0), ("b", 2 / 1.1), (" c", 2.0)]),
    ("[a (b) c]", [("a ", 1 / 1.1), ("b", 1.0), (" c", 1 / 1.1)]),  # ÷1.1 then ×1.1 is 1 again
    ("a :1.2) b", [("a :1.2) b", 1.0)]),             # a weight with no open "(" is text
    ("a]b)c", [("a]b)c", 1.0)]),                      # closers with nothing open are text
    ("\\\\ x", [("\\ x", 1.0)]),                      # \\ is one backslash
    ("a \\ b", [("a  b", 1.0)]),                      # a lone backslash vanishes
    ("(\\(x\\))", [("(x)", 1.1)]),                    # escapes inside a group take its weight
    (":", [(":", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK a", [("", 1.0), ("BREAK", -1.0), ("a", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # weighted BREAK is A1111's literal word "BREAK"
    ("aBREAKb", [("aBREAKb", 1.0)]),                  # BREAK only as a whole word
]


@pytest.mark.parametrize("prompt,runs", TABLE, ids=[repr(p) for p, _ in TABLE])
def test_parser_gives_a1111s_runs(prompt, runs):
    got = parse_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in runs]
    assert [w for _, w in got] == pytest.approx([w for _, w in runs], rel=1e-12)


def test_docstring_weights_are_bit_exact():
    assert [w for _, w in parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")] == \
        [1.0, 1.5730000000000004, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641000000000006, 1.1]


def test_bad_weight_is_one_line():
    with pytest.raises(LatentDiffError, match="prompt weight '1.2.3' is not a number"):
        parse_attention("(a:1.2.3)")



def test_chunks_cut_after_a_near_comma(tiny_sd1):
    tok = tiny_sd1.tokenizer
    head = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 30)  # comma at token 60: 15 from the border
    chunks = chunk_prompt(tok, head)
    assert [len(c.tokens) for c in chunks] == [61, 30]
    assert chunks[0].tokens[-1] == ids(tok, ",")[0] and chunks[1].tokens == ids(tok, "dog") * 30
    far = " ".join(["cat"] * 40) + ", " + " ".join(["dog"] * 50)  # comma at token 40: 35 from the border, too far
    assert [len(c.tokens) for c in chunk_prompt(tok, far)] == [75, 16]
    assert [len(c.tokens) for c in chunk_prompt(tok, head, backtrack=0)] == [75, 16]  # A1111's setting 0: plain split


def test_break_and_weights_in_chunks(tiny_sd1):
    tok = tiny_sd1.tokenizer
    chunks = chunk_prompt(tok, "a (red:1.5) cat BREAK [blue] dog")
    assert [c.tokens for c in chunks] == [ids(tok, "a red cat"), ids(tok, "blue dog")]
    assert chunks[0].weights == [1.0, 1.5, 1.0] and chunks[1].weights == pytest.approx([1 / 1.1, 1.0])
    assert len(chunk_prompt(tok, "a BREAK")) == 1 and len(chunk_prompt(tok, "BREAK a")) == 2
    assert chunk_prompt(tok, "(red)", syntax=False)[0].tokens == ids(tok, "(red)")


def by_hand(tok, text, parts):
    """A1111's formula for one chunk of (text, weight) runs: z · w, then z · mean(z_before) / mean(z · w)."""
    ids77, w77 = weighted_chunk(tok, parts)
    with torch.no_grad():
        z = text(ids77)[0]  # (1, 77, D)
    zw = z * w77[None, :, None]
    assert 0.1 < z.mean().abs() < 10 and 0.1 < zw.mean().abs() < 10  # a well-posed ratio (see conftest.with_text_bias)
    return zw * (z.mean() / zw.mean())


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_emphasis_matches_a1111s_formula(kind, tiny_sd1, tiny_sd2):
    c = with_text_bias(tiny_sd1 if kind == "sd1" else tiny_sd2)
    tok, text = c.tokenizer, c.text_encoder
    got = encode_prompts(tok, text, ["a (red:1.5) cat on [a mat]"])
    want = by_hand(tok, text, [("a ", 1.0), ("red", 1.5), (" cat on ", 1.0), ("a mat", 1 / 1.1)])
    assert (got - want).abs().max().item() < 1e-6
    plain = encode_prompts(tok, text, ["a red cat"])
    assert torch.equal(encode_prompts(tok, text, ["a (red:1) cat"]), plain)  # weight 1 is the plain prompt, bit for bit
    assert not torch.allclose(got, encode_prompts(tok, text, ["a red cat on a mat"]))


def test_each_chunk_keeps_its_own_mean(tiny_sd1):
    c = with_text_bias(tiny_sd1)
    tok, text = c.tokenizer, c.text_encoder
    got = encode_prompts(tok, text, ["(red:2) cat BREAK blue dog"])
    assert got.shape[1] == 154
    assert (got[:, :77] - by_hand(tok, text, [("red", 2.0), (" cat", 1.0)])).abs().max().item() < 1e-6
    assert torch.equal(got[:, 77:], encode_prompts(tok, text, ["blue dog"]))
