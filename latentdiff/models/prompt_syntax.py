"""A1111's prompt syntax, read as A1111 reads it: emphasis runs, BREAK, comma-aware 75-token chunks, and the emphasis
formula on the encoder's output. Written from A1111's documentation and by reading its parser (prompt_parser.py,
sd_hijack_clip.py); the tests hold a table of prompts and the runs A1111 gives for them.

    (word) ×1.1   ((word)) ×1.21   [word] ÷1.1   (word:1.3) ×1.3   \\( \\) \\[ \\] literal brackets   BREAK new chunk

Unclosed brackets still weigh what follows them (A1111 closes them at the end); `(a:w)` sets the weight of a whole
round group; neighbouring runs of equal weight are joined into one text before tokenizing, as A1111 does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import LatentDiffError

ROUND, SQUARE = 1.1, 1 / 1.1  # A1111's multipliers for ( ) and [ ]
BREAK = ("BREAK", -1.0)       # A1111's marker run: it starts a new chunk only while its weight is still exactly -1
COMMA_BACKTRACK = 20          # A1111's `comma_padding_backtrack` default: a chunk border moves back to a comma this near

# One token of the emphasis grammar per match: an escape, a bracket, a weight that closes a round group, plain text.
_TOKEN = re.compile(r"""
    (?P<escape>\\[()\[\]\\]|\\)              # \( \) \[ \] \\  (a lone backslash escapes nothing and vanishes)
  | (?P<open>[(\[])
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)         # (text:1.3)
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+|:)
""", re.X)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A prompt → [(text, weight), ...] as A1111's parser gives it; BREAK is the run ("BREAK", -1.0)."""
    runs: list[list] = []          # [text, weight], mutable while brackets close
    rounds: list[int] = []         # where each open "(" started in runs
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _TOKEN.finditer(text):
        if m.group("escape"):
            runs.append([m.group("escape")[1:], 1.0])
        elif m.group("open"):
            (rounds if m.group("open") == "(" else squares).append(len(runs))
        elif m.group("weight") is not None and rounds:
            try:
                scale(rounds.pop(), float(m.group("weight")))
            except ValueError:
                raise LatentDiffError(f"prompt weight {m.group('weight')!r} is not a number") from None
        elif m.group("close") == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif m.group("close") == "]" and squares:
            scale(squares.pop(), SQUARE)
        else:  # text, or a bracket/weight with nothing open: literal text
            for i, part in enumerate(_BREAK_WORD.split(m.group(0))):
                if i:
                    runs.append(list(BREAK))
                runs.append([part, 1.0])
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    merged: list[list] = []
    for run in runs or [["", 1.0]]:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(t, w) for t, w in merged]


@dataclass
class Chunk:
    """Up to 75 prompt tokens with a weight each, and the textual-inversion vectors that replace some of them."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)  # (offset in tokens, embedding name)


def comma_id(tokenizer) -> int | None:
    """The id of CLIP's ',' word token, or None for a tokenizer without one."""
    i = tokenizer.convert_tokens_to_ids(",</w>")
    return None if i is None or i == tokenizer.unk_token_id else i


def embedding_index(tokenizer, sizes: dict[str, int]) -> dict[int, list[tuple[list[int], str, int]]]:
    """{first token id of a name: [(the name's ids, name, vector count), ...] longest name first} for prompt lookup."""
    index: dict[int, list] = {}
    for name, count in sizes.items():
        ids = tokenizer(name, add_special_tokens=False, truncation=False, verbose=False).input_ids
        if ids:
            index.setdefault(ids[0], []).append((ids, name, count))
    for entries in index.values():
        entries.sort(key=lambda e: -len(e[0]))
    return index


def chunk_prompt(tokenizer, prompt: str, embeddings: dict[str, int] | None = None, *, syntax: bool = True,
                 backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """A prompt → 75-token chunks as A1111 cuts them.

    A full chunk whose last comma lies within `backtrack` tokens of its end is cut after that comma and the rest moves
    to the next chunk; BREAK closes the chunk; a textual-inversion name (`embeddings`: name → vector count) becomes
    its vectors, never split across chunks. `syntax=False` reads the prompt as plain text (A1111's emphasis "None").
    """
    size = tokenizer.model_max_length - 2  # 75
    runs = parse_attention(prompt) if syntax else [(prompt, 1.0)]
    ids = tokenizer([t for t, _ in runs], add_special_tokens=False, truncation=False, verbose=False).input_ids
    comma, index = comma_id(tokenizer), embedding_index(tokenizer, embeddings or {})
    chunks: list[Chunk] = []
    cur, last_comma = Chunk(), -1

    def close(rest: Chunk | None = None) -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur, last_comma = rest or Chunk(), -1

    for tokens, (text, weight) in zip(ids, runs):
        if (text, weight) == BREAK:
            close()
            continue
        pos = 0
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == comma:
                last_comma = len(cur.tokens)
            elif backtrack and len(cur.tokens) == size and last_comma != -1 and size - last_comma <= backtrack:
                cut = last_comma + 1  # the tokens after the comma start the next chunk
                rest = Chunk(cur.tokens[cut:], cur.weights[cut:], [(o - cut, n) for o, n in cur.fixes if o >= cut])
                cur.tokens, cur.weights = cur.tokens[:cut], cur.weights[:cut]
                cur.fixes = [(o, n) for o, n in cur.fixes if o < cut]
                close(rest)
            if len(cur.tokens) == size:
                close()
            match = next((e for e in index.get(tok, []) if tokens[pos:pos + len(e[0])] == e[0]), None)
            if match is None:
                cur.tokens.append(tok)
                cur.weights.append(weight)
                pos += 1
                continue
            name_ids, name, count = match
            if count > size:
                raise LatentDiffError(f"embedding {name!r} has {count} vectors; a chunk holds at most {size}")
            if len(cur.tokens) + count > size:
                close()
            cur.fixes.append((len(cur.tokens), name))
            cur.tokens += [0] * count  # placeholder ids, as A1111's; their embeddings are replaced (TokenFixes)
            cur.weights += [weight] * count
            pos += len(name_ids)
    if cur.tokens or not chunks:
        chunks.append(cur)
    return chunks


def chunk_prompts(tokenizer, prompts: list[str], embeddings: dict[str, int] | None = None,
                  *, syntax: bool = True) -> list[list[Chunk]]:
    """chunk_prompt for each prompt, the shorter ones padded with empty chunks to the longest one's count."""
    chunked = [chunk_prompt(tokenizer, p, embeddings, syntax=syntax) for p in prompts]
    k = max(len(c) for c in chunked)
    return [c + [Chunk() for _ in range(k - len(c))] for c in chunked]


def chunk_ids(tokenizer, chunk: list[int]) -> list[int]:
    """BOS + chunk + EOS, padded with the tokenizer's pad token to model_max_length (77), as diffusers and A1111 pad."""
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))


def chunk_weights(tokenizer, chunk: Chunk) -> list[float]:
    """The 77 weights of a chunk's ids: 1 for BOS, EOS and padding."""
    return [1.0, *chunk.weights] + [1.0] * (tokenizer.model_max_length - 1 - len(chunk.weights))


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's default ("Original") emphasis: scale each token's vector by its weight, then restore the mean.

    z: (N, 77, D) hidden states of N chunks; weights: (N, 77). The mean is taken per chunk over (77, D), which is
    A1111's number for one image (A1111 takes it over the batch it encodes together).
    """
    if bool((weights == 1).all()):
        return z  # exactly A1111's result too: the ratio of equal means is 1
    before = z.mean(dim=(1, 2), keepdim=True)                 # (N, 1, 1)
    z = z * weights.to(z.dtype).unsqueeze(-1)                  # (N, 77, D)
    return z * (before / z.mean(dim=(1, 2), keepdim=True))


class TokenFixes:
    """While active, the text encoder's token embeddings at given (row, offset) take textual-inversion vectors.

    `fixes`: [(row in the (N, 77) id batch, offset in the row, vectors (n, D))]. A forward hook on the input embedding
    (as A1111's EmbeddingsWithFixes), so any CLIP encoder works unchanged.
    """

    def __init__(self, text_encoder, fixes: list[tuple[int, int, torch.Tensor]]):
        self.embedding, self.fixes, self.handle = text_encoder.get_input_embeddings(), fixes, None

    def _hook(self, module, inputs, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()  # (N, 77, D)
        for row, offset, vectors in self.fixes:
            out[row, offset:offset + vectors.shape[0]] = vectors.to(out.device, out.dtype)
        return out

    def __enter__(self) -> "TokenFixes":
        if self.fixes:
            self.handle = self.embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
