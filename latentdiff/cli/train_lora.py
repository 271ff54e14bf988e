"""The `latentdiff train-lora [CONFIG.yaml] [--flag value ...]` subcommand."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .common import add_flag, removed_on_failure


def add_train_lora_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `train-lora`: a YAML recipe (configs/lora-*.yaml) and one flag per LoraTrainConfig field, flags winning."""
    from ..training.config import KEY_ALIASES
    from ..training.lora_config import LoraTrainConfig

    p = subparsers.add_parser(
        "train-lora", help="fine-tune a LoRA on a folder of captioned images",
        description="Train a LoRA adapter. Settings come from the YAML file (optional), then from flags "
                    "(--max-steps 500, --targets to_q to_v, --no-cache-latents). See configs/lora-*.yaml.")
    p.add_argument("config", nargs="?", default=None, help="YAML recipe, e.g. configs/lora-default.yaml")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in output_dir (or the given checkpoint folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    defaults = LoraTrainConfig()
    aliases = {key: alias for alias, key in KEY_ALIASES.items()}  # --mixed-precision is also --dtype, as in generate
    for f in fields(LoraTrainConfig):
        flags = ["--" + name.replace("_", "-") for name in (f.name, aliases.get(f.name)) if name]
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            add_flag(p, *flags, dest=f"set_{f.name}", action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, list):
            add_flag(p, *flags, dest=f"set_{f.name}", nargs="+", default=None, metavar="VALUE")
        else:
            add_flag(p, *flags, dest=f"set_{f.name}", type=type(default), default=None, metavar=type(default).__name__.upper())
    p.set_defaults(func=run_train_lora)


def run_train_lora(args: argparse.Namespace) -> int:
    """Load the recipe with overrides, train, print the files written and the fixed-noise loss before/after."""
    from ..training.lora_config import load_config
    from ..training.lora import train_lora

    overrides = {k.removeprefix("set_"): v for k, v in vars(args).items() if k.startswith("set_") and v is not None}
    cfg = load_config(args.config, overrides)
    with removed_on_failure(cfg.output_dir, cfg.cache_dir):
        result = train_lora(cfg, resume=args.resume, progress=not args.quiet)
    for path in result.files:
        print(path)
    for path in result.validation_images:
        print(path)
    if result.eval_loss_end is not None:
        before = f"{result.eval_loss_start:.4f} → " if result.eval_loss_start is not None else ""
        print(f"{result.steps} steps in {result.seconds:.0f} s; fixed-noise loss {before}{result.eval_loss_end:.4f}")
    return 0
