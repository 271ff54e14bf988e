"""A1111's prompt editing and alternation: the text a prompt stands for at each sampling step.

    [from:to:when]   `from` until step `when`, then `to`      [to:when]  added at `when`     [from::when]  removed at `when`
    [a|b|c]          a, b, c, a, ... one per step
`when` is a step number, or with a decimal point the fraction of the steps (A1111 ≥ 1.6: `0.3` of 20 steps is step 6).
A prompt these rules cannot read is used as written for every step, as A1111 does. Emphasis brackets are left in the
text for prompt_syntax.parse_attention. Written from A1111's wiki and by reading its grammar (modules/prompt_parser.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*$")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")


class _Unreadable(Exception):
    """The prompt does not follow the grammar: it is used as written."""


@dataclass
class _Scheduled:
    before: list | None     # parts before `when` (None: [to:when], nothing before)
    after: list
    when: str               # the number as written


@dataclass
class _Alternate:
    options: list[list]


class _Parser:
    """Recursive descent over A1111's grammar; a part is a str, _Scheduled or _Alternate."""

    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def start(self) -> list:
        parts: list = []
        while self.pos < len(self.text):
            mark = self.pos
            try:
                parts += self.prompt(top=True)
            except _Unreadable:
                self.pos = mark
            if self.pos == mark:
                c = self.peek()
                if c not in "[]():":  # a stray bracket or colon is text at the top level only; `|` is not
                    raise _Unreadable
                parts.append(c)
                self.pos += 1
        return parts

    def prompt(self, top: bool = False) -> list:
        parts: list = []
        while True:
            c = self.peek()
            if c == "(":
                mark = self.pos
                try:
                    parts += self.round()
                except _Unreadable:
                    if not top:
                        raise
                    self.pos = mark
                    return parts
            elif c == "[":
                mark = self.pos
                try:
                    parts.append(self.square())
                except _Unreadable:
                    if not top:
                        raise
                    self.pos = mark
                    return parts
            else:
                m = _PLAIN.match(self.text, self.pos)
                if not m:
                    return parts
                parts.append(m.group(0))
                self.pos = m.end()

    def round(self) -> list:
        """"(" prompt ")" or "(" prompt ":" prompt ")": kept as text (emphasis is read later)."""
        self.pos += 1
        parts = ["(", *self.prompt()]
        if self.peek() == ":":
            self.pos += 1
            parts += [":", *self.prompt()]
        if self.peek() != ")":
            raise _Unreadable
        self.pos += 1
        return [*parts, ")"]

    def square(self):
        """"[" prompt "]", "[" [prompt ":"] prompt ":" NUMBER "]" or "[" prompt ("|" prompt)+ "]"."""
        self.pos += 1
        pieces, seps = [self.prompt()], []
        while self.peek() in (":", "|"):
            seps.append(self.peek())
            self.pos += 1
            start = self.pos
            if seps[-1] == ":" and (m := _NUMBER.match(self.text[start:self.text.find("]", start)] if "]" in self.text[start:] else "")):
                pieces.append(m.group(1))
                self.pos = self.text.find("]", start)
                break
            pieces.append(self.prompt())
        if self.peek() != "]":
            raise _Unreadable
        self.pos += 1
        if not seps:
            return ["[", *pieces[0], "]"]
        if set(seps) == {"|"}:
            return _Alternate(pieces)
        if set(seps) == {":"} and isinstance(pieces[-1], str) and len(pieces) in (2, 3):
            return _Scheduled(pieces[0] if len(pieces) == 3 else None, pieces[-2], pieces[-1])
        raise _Unreadable


def _steps_of(parts, steps: int, found: set[int]) -> None:
    """Collect the steps where the text changes; A1111 resolves `when` in place (an int step, ≤ steps)."""
    for p in parts:
        if isinstance(p, list):
            _steps_of(p, steps, found)
        elif isinstance(p, _Scheduled):
            v = float(p.when)
            v = (v - int(v)) * steps if "." in p.when else int(v)
            p.when = min(steps, int(v))
            if p.when >= 1:
                found.add(p.when)
            _steps_of(p.before or [], steps, found)
            _steps_of(p.after, steps, found)
        elif isinstance(p, _Alternate):
            found.update(range(1, steps + 1))
            for o in p.options:
                _steps_of(o, steps, found)


def _text_at(parts, step: int) -> str:
    out = []
    for p in parts:
        if isinstance(p, list):
            out.append(_text_at(p, step))
        elif isinstance(p, _Scheduled):
            out.append(_text_at(p.before or [], step) if step <= p.when else _text_at(p.after, step))
        elif isinstance(p, _Alternate):
            out.append(_text_at(p.options[(step - 1) % len(p.options)], step))
        else:
            out.append(p)
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text), ...]: the text for every sampling step (0-based) s is the first entry with s ≤ last step."""
    try:
        parts = _Parser(prompt).start()
    except (_Unreadable, RecursionError):
        return [(steps, prompt)]
    found = {steps}
    _steps_of(parts, steps, found)
    return [(s, _text_at(parts, s)) for s in sorted(found)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of sampling step `step` (0-based), as A1111's reconstruct_cond_batch picks it."""
    return next((text for last, text in schedule if step <= last), schedule[-1][1])
