"""The `latentdiff` command: parses arguments, calls the library, prints one line per result or error."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import LatentDiffError

# Subcommands that live beside their library code: (module, function adding the parser). Each parser sets
# `func` (args → exit code) with set_defaults. Add a line here to add a command.
EXTRA_COMMANDS = [
    ("latentdiff.training.emoji_cli", "add_data_parser"),
    ("latentdiff.training.train_cli", "add_train_parser"),
    ("latentdiff.pipelines.edit_cli", "add_edit_parsers"),
    ("latentdiff.profile_cli", "add_profile_parser"),
    ("latentdiff.bench_cli", "add_bench_parser"),
    ("latentdiff.training.lora_cli", "add_train_lora_parser"),
    ("latentdiff.server.serve_cli", "add_serve_parser"),
]


def _quiet_libraries() -> None:
    """Keep library warnings and progress bars out of the CLI's output (ours show instead)."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _lora_arg(text: str) -> tuple[str, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path or len(path) == 1:  # no weight given (or a Windows drive letter)
        return text, 1.0
    try:
        return path, float(weight)
    except ValueError:
        return text, 1.0


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a model and runs it."""
    p.add_argument("--model", help="diffusers folder or .safetensors/.ckpt file (default: the embedded model)")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin pickles (loaded with weights_only=True)")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], help="override the model's prediction type")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16 (auto: fp16 on CUDA, bf16 on bf16-native CPUs, else fp32)")
    p.add_argument("--attention", default="sdpa", help="sdpa, xformers or math")
    p.add_argument("--fast", action="store_true", help="turn on the speed levers benchmarks/BENCHMARKS.md measured faster here")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first image; pays off over many)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's generation_config.json, else 25)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's generation_config.json, else 7.5)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale φ (0.7 for v-prediction)")
    p.add_argument("--clip-skip", type=int, default=0, help="use the n-th last CLIP layer")
    p.add_argument("--sampler", default=None, help="dpmpp_2m (default, unless the model's generation_config.json says otherwise), euler_a, euler, ddim, ddpm, pndm, unipc, dpmpp_2m_karras, heun, lms")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, recorded in the PNG)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--num", type=int, default=1, help="images per prompt")
    p.add_argument("--lora", action="append", default=[], type=_lora_arg, metavar="PATH[:WEIGHT]", help="LoRA file, repeatable")
    p.add_argument("--out", help="output PNG (default: the next numbered file in the current folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentdiff", description="Latent text-to-image diffusion, offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="draw images from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    g.add_argument("--replay", metavar="PNG", help="draw again the image a latentdiff PNG was made with")
    add_model_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a model: architecture, parameters, dtypes, prediction type")
    i.add_argument("path")
    i.add_argument("--allow-pickle", action="store_true")
    i.set_defaults(func=cmd_info)

    for module, fn in EXTRA_COMMANDS:
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def resolve_model(path: str | None) -> str:
    """The user's model path, or the embedded default model (a diffusers folder in latentdiff/assets)."""
    if path and path != "default":
        return path
    from .checkpoints.loader import ASSETS

    default = ASSETS / "default"
    if not (default / "model_index.json").is_file():
        raise LatentDiffError("no --model given and the embedded default model is not built into this install yet; pass --model PATH")
    return str(default)


def output_paths(out: str | None, count: int) -> list[Path]:
    """Where the PNGs go; checked for writability before any model is loaded."""
    from .pipelines.params import next_free_path

    if out is None:
        first = next_free_path(".")
        n0 = int(first.stem)
        paths = [Path(f"{n0 + i:05d}.png") for i in range(count)]
    else:
        base = Path(out)
        if base.suffix.lower() != ".png":
            raise LatentDiffError(f"output file must end in .png: {out}")
        paths = [base] if count == 1 else [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(count)]
    folder = paths[0].parent
    if not folder.is_dir():
        raise LatentDiffError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise LatentDiffError(f"output folder is not writable: {folder}")
    return paths


def check_request(p, num: int) -> None:
    """Fail on bad sampling settings before any model is loaded."""
    from .pipelines.samplers import check_sampler
    from .pipelines.text_to_image import check_size

    if p.width is not None or p.height is not None:
        check_size(p.width or 8, p.height or 8)
    if p.steps is not None and p.steps <= 0:  # None: the model's default, checked when it loads
        raise LatentDiffError(f"steps must be a positive integer, got {p.steps}")
    if num <= 0:
        raise LatentDiffError(f"--num must be positive, got {num}")
    if p.sampler is not None:
        check_sampler(p.sampler)


def cmd_generate(args) -> int:
    from .pipelines.params import GenerationParams, read_png_params, save_png
    from .pipelines.text_to_image import LatentDiffusionPipeline

    if args.replay:
        p = read_png_params(args.replay)
        if "Init image hash" in p.extra:  # drawn from an input picture: generate cannot redraw it
            mode = "inpaint" if "Mask hash" in p.extra else "img2img"
            raise LatentDiffError(f"{args.replay} was drawn by {mode} from an input picture; redraw it with `latentdiff {mode} "
                                  f"--image INPUT{' --mask MASK' if mode == 'inpaint' else ''} --replay {args.replay}`")
        model = args.model or p.model
        loras = [tuple(x) for x in p.loras]
    else:
        if args.prompt is None:
            raise LatentDiffError("give a prompt (\"\" for unconditional) or --replay IMAGE.png")
        p = GenerationParams(prompt=args.prompt, negative_prompt=args.negative,  # None: the model's default (pipe.sampling_settings)
                             steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance,
                             seed=args.seed, width=args.width, height=args.height, guidance_rescale=args.guidance_rescale,
                             clip_skip=args.clip_skip)
        model, loras = args.model, args.lora
    num = 1 if args.replay else args.num
    check_request(p, num)
    paths = output_paths(args.out, num)
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model(model), device=args.device, dtype=args.dtype,
                                                   attention=args.attention, allow_pickle=args.allow_pickle,
                                                   fast=args.fast, compile=args.compile,
                                                   prediction_type=args.prediction_type)
    if model in (None, "default"):
        pipe.model_name = "default"
    for path, weight in loras:
        pipe.load_lora(path, weight=weight)
    out = pipe(p.prompt, p.negative_prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale, sampler=p.sampler,
               seed=p.seed, height=p.height, width=p.width, num_images=num, guidance_rescale=p.guidance_rescale,
               clip_skip=p.clip_skip)
    for image, params, path in zip(out.images, out.params, paths):
        save_png(image, params, path)
        print(f"{path}  seed {params.seed}")
    return 0


def cmd_info(args) -> int:
    from .checkpoints import load_components

    c = load_components(resolve_model(args.path), allow_pickle=args.allow_pickle)
    u = c.unet.config

    def count(m) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M"

    def dtypes(m) -> str:
        return ",".join(sorted({str(p.dtype).replace("torch.", "") for p in m.parameters()}))

    print(f"model            {c.source}")
    print(f"layout           {c.kind.upper()}{' inpainting' if u.in_channels == 9 else ''}")
    print(f"prediction type  {c.prediction_type}")
    print(f"U-Net            {count(c.unet)} params, {dtypes(c.unet)}; channels {list(u.block_out_channels)}, "
          f"{u.layers_per_block} blocks/level, attention {['yes' if a else 'no' for a in u.attention_levels]}, "
          f"heads {list(u.num_heads)}, context {u.cross_attention_dim}, in {u.in_channels} → out {u.out_channels}")
    v = c.vae.config
    print(f"VAE              {count(c.vae)} params, {dtypes(c.vae)}; {2 ** (len(v.block_out_channels) - 1)}× down, "
          f"{v.latent_channels} latent channels, scaling {v.scaling_factor}")
    t = c.text_encoder.config
    print(f"text encoder     {count(c.text_encoder)} params, {dtypes(c.text_encoder)}; {t.num_hidden_layers} layers, width {t.hidden_size}")
    print(f"scheduler        {c.scheduler_config.get('_class_name', '?')}, {c.scheduler_config.get('beta_schedule', '?')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _quiet_libraries()
        return args.func(args)
    except LatentDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
