"""The `latentdiff data lora-demo {subject,sketch} SRC DST` subcommand: parser and runner (the library part is
latentdiff/data/lora_demo.py)."""

from __future__ import annotations

import argparse


def add_lora_demo_parser(kinds: argparse._SubParsersAction) -> None:
    """Add `lora-demo` to the `data` command's sub-subcommands."""
    p = kinds.add_parser("lora-demo", help="a small LoRA training set cut from a captioned folder (a subject or sketches)",
                         description="Write a small LoRA demo set with kohya .txt captions from a captioned image folder "
                                     "(e.g. the output of `latentdiff data emoji`): 'subject' copies every image whose "
                                     "caption starts with --name; 'sketch' redraws --count training images as pencil sketches.")
    p.add_argument("kind", choices=["subject", "sketch"])
    p.add_argument("src", help="captioned image folder (e.g. data/emoji)")
    p.add_argument("dst", help="folder to write the demo set to")
    p.add_argument("--name", default="merman", help="subject: the caption (before any ':') to collect")
    p.add_argument("--count", type=int, default=40, help="sketch: how many images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_lora_demo)


def run_lora_demo(args: argparse.Namespace) -> int:
    """Write the set and print how many images it holds; LatentDiffError propagates to the caller."""
    from latentdiff.data.lora_demo import make_sketch_set, make_subject_set

    if args.kind == "subject":
        n = make_subject_set(args.src, args.dst, name=args.name)
    else:
        n = make_sketch_set(args.src, args.dst, count=args.count, seed=args.seed)
    print(f"{n} images in {args.dst}")
    return 0
