"""Helpers shared by the tests (import with `from helpers import ...`; tests/ is on sys.path under pytest)."""

from __future__ import annotations

from latentdiff.bench import free_port  # noqa: F401  (one definition: the server benchmark uses it too)
from latentdiff.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """`latentdiff ARGV...` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ids(tok, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS."""
    return tok(text, add_special_tokens=False).input_ids


def weighted_chunk(tok, parts: list[tuple[str, float]]):
    """One 77-token chunk of (text, weight) runs, written out by hand: ids (1, 77) with BOS/EOS/padding, weights (77,)."""
    import torch

    tokens, weights = [], []
    for t, w in parts:
        tokens += ids(tok, t)
        weights += [w] * len(ids(tok, t))
    pad = 77 - 2 - len(tokens)
    ids77 = torch.tensor([[tok.bos_token_id, *tokens, tok.eos_token_id] + [tok.pad_token_id] * pad])
    return ids77, torch.tensor([1.0, *weights, 1.0] + [1.0] * pad)
