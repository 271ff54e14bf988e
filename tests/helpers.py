"""Helpers shared by the tests (import with `from helpers import ...`; tests/ is on sys.path under pytest)."""

from __future__ import annotations

from latentdiff.bench import free_port  # noqa: F401  (one definition: the server benchmark uses it too)
from latentdiff.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """`latentdiff ARGV...` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
