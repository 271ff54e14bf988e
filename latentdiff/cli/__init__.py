"""The `latentdiff` command: parses arguments, calls the library, prints one line per result or error.

One module per command family beside this one (generate/info, edit: img2img/inpaint, train/eval, train_lora, data,
profile, bench, serve); `common` holds the flags and output helpers they share. Nothing in the library imports cli.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import LatentDiffError
from .common import check_flag_numbers

# (module, function adding its parsers): each parser sets `func` (args → exit code). Add a line here to add a command.
COMMANDS = [
    ("latentdiff.cli.generate", "add_generate_parsers"),
    ("latentdiff.cli.data", "add_data_parser"),
    ("latentdiff.cli.train", "add_train_parser"),
    ("latentdiff.cli.edit", "add_edit_parsers"),
    ("latentdiff.cli.profile", "add_profile_parser"),
    ("latentdiff.cli.bench", "add_bench_parser"),
    ("latentdiff.cli.train_lora", "add_train_lora_parser"),
    ("latentdiff.cli.serve", "add_serve_parser"),
]


def _quiet_libraries() -> None:
    """Keep library warnings and progress bars out of the CLI's output (ours show instead)."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLI's error form: `error: <one line>` on stderr and exit 2 (no usage block)."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="latentdiff", description="Latent text-to-image diffusion, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, fn in COMMANDS:
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _quiet_libraries()
        check_flag_numbers(args)
        return args.func(args)
    except LatentDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
