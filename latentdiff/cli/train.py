"""The `latentdiff train CONFIG.yaml` and `latentdiff eval` subcommands: parsers and runners."""

from __future__ import annotations

import argparse
import sys

from .common import add_renamed, add_steps_guidance


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` (from-scratch stages) and `eval` (the judge) to the main parser's subparsers."""
    t = subparsers.add_parser("train", help="train a model from scratch from a YAML recipe (vae → unet → export)",
                              description="Train the VAE, then the U-Net with its text encoder, then export a diffusers "
                                          "folder (fp16). Runs under `accelerate launch` too.")
    t.add_argument("config", nargs="?", default=None, help="YAML recipe, e.g. configs/default-model.yaml")
    t.add_argument("--stage", default="all", choices=["vae", "unet", "decoder", "export", "all"], help="which stage (default all)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from each stage's latest checkpoint (or, with one --stage, the given checkpoint folder)")
    t.add_argument("--output-dir", default=None, help="the run folder (default: the recipe's output_dir)")
    t.add_argument("--export-dir", dest="export_dir", default=None, help="export folder (default OUTPUT_DIR/model)")
    add_renamed(t, "--out", "--export-dir", "export_dir")
    t.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="judge a model on held-out prompts: accuracy and Fréchet distance in the judge's features",
                              description="Runs on the CPU in fp32 (no --device/--dtype), so its numbers compare across "
                                          "machines and with the README's.")
    e.add_argument("data", help="dataset folder (output of `latentdiff data emoji`)")
    e.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    e.add_argument("--judge", default=None, help="judge file (trained on real images; built and cached if absent)")
    add_steps_guidance(e)
    e.add_argument("--sampler", default=None, help="sampler name (default: the model's, as generate)")
    e.add_argument("--per-prompt", type=int, default=2, help="images per held-out emoji")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="write the numbers to this JSON file")
    e.add_argument("--work-dir", default="runs/eval", help="folder for the judge and the decoded real images (default runs/eval)")
    add_renamed(e, "--json", "--out", "out")
    add_renamed(e, "--work", "--work-dir", "work_dir")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from latentdiff.errors import LatentDiffError
    from latentdiff.training.config import load_config
    from latentdiff.training.stages import run

    from .common import removed_on_failure

    if args.config is None and args.resume and args.resume.endswith((".yaml", ".yml")):  # the old `train --resume CONFIG`
        args.config, args.resume = args.resume, "latest"
        print("note: --resume takes an optional checkpoint now; write `latentdiff train CONFIG --resume`", file=sys.stderr)
    if args.config is None:
        raise LatentDiffError("train needs a YAML recipe (e.g. configs/default-model.yaml)")
    cfg = load_config(args.config, output_dir=args.output_dir)  # every value checked before anything is cached or trained
    with removed_on_failure(cfg.output_dir):
        out = run(args.config, stage=args.stage, resume=args.resume, out=args.export_dir, output_dir=args.output_dir)
    if out is not None:
        print(f"model written to {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentdiff.errors import LatentDiffError
    from latentdiff.evaluation.evaluate import main_eval

    if not Path(args.data).is_dir():
        raise LatentDiffError(f"no such dataset folder: {args.data}")
    if args.per_prompt < 1:
        raise LatentDiffError(f"--per-prompt must be positive, got {args.per_prompt}")
    if args.steps is not None and args.steps < 1:
        raise LatentDiffError(f"--steps must be positive, got {args.steps}")
    if args.sampler is not None:
        from latentdiff.pipelines.samplers import check_sampler

        check_sampler(args.sampler)
    return main_eval(args)
