"""The `latentdiff data emoji OUT_DIR` subcommand: parser and runner (`data lora-demo` is lora_demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .lora_demo import add_lora_demo_parser


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` with its `emoji` and `lora-demo` sub-subcommands to the main parser's subparsers."""
    data = subparsers.add_parser("data", help="build training datasets")
    kinds = data.add_subparsers(dest="data_command", metavar="KIND", required=True)
    emoji = kinds.add_parser(
        "emoji", help="Fluent 3D emoji (and other openly licensed sets) + emojibase captions (npm packages)",
        description="Build the emoji image-caption dataset (PNG on white + metadata.jsonl + holdout.txt) "
                    "from the npm packages @lobehub/fluent-emoji-3d@1.1.0 and emojibase-data@17.0.0, "
                    "optionally with emoji-datasource-google (Noto, Apache-2.0) and emoji-datasource-twitter "
                    "(Twemoji, CC-BY 4.0); captions carry each set's style.")
    emoji.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to create (must be absent or empty)")
    emoji.add_argument("--sets", default="fluent3d", metavar="NAMES",
                       help="comma-separated image sets: fluent3d, noto, twemoji (default fluent3d)")
    emoji.add_argument("--cache", type=Path, default=None, metavar="DIR",
                       help="where `npm pack` tarballs are cached (default ~/.cache/latentdiff/npm)")
    emoji.add_argument("--tarballs", type=Path, default=None, metavar="DIR",
                       help="use the .tgz files already in DIR (from `npm pack`); no npm, no network")
    emoji.add_argument("--size", type=int, default=256, metavar="N", help="image side in pixels (default 256)")
    emoji.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if an earlier `data emoji` made it (other folders are refused)")
    add_lora_demo_parser(kinds)
    data.set_defaults(func=run_data)


def run_data(args: argparse.Namespace) -> int:
    """Run a `data` subcommand and print its report; LatentDiffError propagates to the caller."""
    from latentdiff.data.emoji import build_emoji_dataset, parse_sets

    if args.data_command == "emoji":
        report = build_emoji_dataset(args.out_dir, cache_dir=args.cache, tarballs=args.tarballs,
                                     size=args.size, overwrite=args.overwrite, sets=parse_sets(args.sets))
        print(report.summary())
        return 0
    raise ValueError(f"unknown data command {args.data_command!r}")
