"""The `latentdiff` command: parses arguments, calls the library, prints one line per result or error."""

from __future__ import annotations

import argparse
import importlib
import math
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


class OneLineParser(argparse.ArgumentParser):
    """argparse with the CLI's error form: `error: <one line>` on stderr and exit 2 (no usage block)."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


LORA_SUFFIXES = (".safetensors", ".pt", ".bin", ".ckpt")


def _lora_arg(text: str) -> tuple[str, float]:
    """`PATH[:WEIGHT]` → (path, weight). A colon belongs to the path when what follows it looks like a path
    (a Windows drive letter `C:\\x`, a folder `a:b/x`, a LoRA file name) or when the whole text names an existing file."""
    path, sep, weight = text.rpartition(":")
    if not sep or not path or os.path.isfile(text):
        return text, 1.0
    if len(path) == 1 and weight[:1] in ("\\", "/"):  # C:\x.safetensors, C:/x.safetensors
        return text, 1.0
    if "/" in weight or "\\" in weight or weight.lower().endswith(LORA_SUFFIXES):
        return text, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"LoRA weight {weight!r} is not a number (give PATH or PATH:WEIGHT, e.g. x.safetensors:0.8)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"LoRA weight {weight!r} is not a finite number")
    return path, value


def check_flag_numbers(args: argparse.Namespace) -> None:
    """Every float flag must be finite: NaN/inf guidance, strength or blur would draw black pictures and break the PNG's JSON."""
    for dest, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise LatentDiffError(f"--{dest.removeprefix('set_').replace('_', '-')} must be a finite number, got {value}")


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
    parser = OneLineParser(prog="latentdiff", description="Latent text-to-image diffusion, offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="draw images from a prompt")
    g.add_argument("prompt", nargs="?", default=None, help='the prompt ("" for unconditional)')
    g.add_argument("--replay", metavar="PNG", help="draw again the image a PNG (ours or A1111's) was made with; flags override its settings")
    add_model_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="describe a model (architecture, native size, sampling defaults) or a LoRA file")
    i.add_argument("path", nargs="?", help="model folder, checkpoint or LoRA file (default: the embedded model)")
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


def output_paths(out: str | None, count: int) -> list[Path | None]:
    """Where the PNGs go, checked before any model is loaded; None: the next free number in the current folder,
    reserved only when the finished file is published (params.save_png_numbered), so concurrent runs never collide."""
    if out is None:
        paths: list[Path | None] = [None] * count
        folder = Path(".")
    else:
        base = Path(out)
        if base.is_dir():
            raise LatentDiffError(f"--out {out} is a folder; give a file name ending in .png")
        if base.suffix.lower() != ".png":
            raise LatentDiffError(f"output file must end in .png: {out}")
        paths = [base] if count == 1 else [base.with_name(f"{base.stem}-{i}{base.suffix}") for i in range(count)]
        for path in paths:
            if path.is_dir():
                raise LatentDiffError(f"{path} is a folder; give another --out")
        folder = base.parent
    if not folder.is_dir():
        raise LatentDiffError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise LatentDiffError(f"output folder is not writable: {folder}")
    return paths


def save_outputs(out, paths: list[Path | None]) -> int:
    """Write each image with its parameters (numbered names reserved atomically) and print one line per file."""
    from .pipelines.params import save_png, save_png_numbered

    for image, params, path in zip(out.images, out.params, paths):
        written = save_png_numbered(image, params, ".") if path is None else save_png(image, params, path)
        print(f"{written}  seed {params.seed}")
    return 0


def check_request(p, num: int) -> None:
    """Fail on bad sampling settings before any model is loaded (`p`: steps, sampler, guidance, width, height and,
    where given, seed, guidance_rescale, clip_skip)."""
    from .pipelines.request import check_guidance, check_seed, generation_bytes
    from .pipelines.samplers import check_sampler
    from .pipelines.text_to_image import check_size
    from .runtime import check_fits

    if num <= 0:
        raise LatentDiffError(f"--num must be positive, got {num}")
    if p.width is not None or p.height is not None:
        check_size(p.width or 8, p.height or 8)
        w, h = p.width or p.height, p.height or p.width
        check_fits(generation_bytes(w, h, num), f"{w}x{h}" + (f" × {num} images" if num > 1 else ""))
    if p.steps is not None and p.steps <= 0:  # None: the model's default, checked when it loads
        raise LatentDiffError(f"steps must be a positive integer, got {p.steps}")
    if p.sampler is not None:
        check_sampler(p.sampler)
    if getattr(p, "seed", None) is not None:
        check_seed(p.seed, num)
    guidance = getattr(p, "guidance", getattr(p, "guidance_scale", None))  # a namespace of flags or GenerationParams
    check_guidance(1.0 if guidance is None else guidance, getattr(p, "guidance_rescale", 0.0) or 0.0)
    if (getattr(p, "clip_skip", 0) or 0) < 0:
        raise LatentDiffError(f"--clip-skip must be ≥ 0, got {p.clip_skip}")


def check_runtime(args) -> None:
    """--device, --dtype and --attention known here, before any model loads."""
    from .models.attention import BACKENDS
    from .runtime import parse_device, parse_dtype

    parse_dtype(args.dtype, parse_device(args.device))
    if args.attention not in BACKENDS:
        raise LatentDiffError(f"unknown attention {args.attention!r}; choose one of {', '.join(BACKENDS)}")


def report_fast(pipe, args) -> None:
    """One line on stderr saying what --fast/--compile turned on here (BENCHMARKS.md lists what is proven faster)."""
    if not (args.fast or args.compile):
        return
    from .fast import levers_for

    proven = levers_for(pipe.device)
    note = "" if proven or not args.fast else f"; no speed lever is proven faster on {pipe.device.type} yet"
    print(f"fast: {', '.join(pipe.fast_levers) or 'nothing'} on {pipe.device.type}{note}", file=sys.stderr)


def cmd_generate(args) -> int:
    from .pipelines.params import GenerationParams
    from .pipelines.replay import apply_replay
    from .pipelines.text_to_image import LatentDiffusionPipeline

    for line in apply_replay(args, "generate")[0] if args.replay else []:  # the PNG's settings unless a flag overrides
        print(line, file=sys.stderr)
    if args.prompt is None:
        raise LatentDiffError("give a prompt (\"\" for unconditional) or --replay IMAGE.png")
    p = GenerationParams(prompt=args.prompt, negative_prompt=args.negative,  # None: the model's default (pipe.sampling_settings)
                         steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance,
                         seed=args.seed, width=args.width, height=args.height, guidance_rescale=args.guidance_rescale,
                         clip_skip=args.clip_skip)
    model, loras = args.model, args.lora
    num = args.num
    check_request(p, num)
    check_runtime(args)
    paths = output_paths(args.out, num)
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model(model), device=args.device, dtype=args.dtype,
                                                   attention=args.attention, allow_pickle=args.allow_pickle,
                                                   fast=args.fast, compile=args.compile,
                                                   prediction_type=args.prediction_type)
    report_fast(pipe, args)
    if model in (None, "default"):
        pipe.model_name = "default"
    for path, weight in loras:
        pipe.load_lora(path, weight=weight)
    out = pipe(p.prompt, p.negative_prompt, num_inference_steps=p.steps, guidance_scale=p.guidance_scale, sampler=p.sampler,
               seed=p.seed, height=p.height, width=p.width, num_images=num, guidance_rescale=p.guidance_rescale,
               clip_skip=p.clip_skip)
    return save_outputs(out, paths)


def cmd_info(args) -> int:
    from .checkpoints import load_components
    from .checkpoints.loader import GENERATION_CONFIG, SAMPLING_DEFAULTS
    from .lora.io import describe_lora, is_lora_file

    if args.path and is_lora_file(args.path):
        print("\n".join(describe_lora(args.path)))
        return 0
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
    side = u.sample_size * 2 ** (len(v.block_out_channels) - 1)
    print(f"native size      {side}×{side}")
    d = {**SAMPLING_DEFAULTS, **c.generation}
    print(f"sampling         {d['num_inference_steps']} steps, guidance {d['guidance_scale']:g}, {d['sampler']} "
          f"({GENERATION_CONFIG if c.generation else 'library defaults: the model sets none'})")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
