"""What every command shares: model and sampling flags, output paths and files, checks made before a model loads,
and the clean-up of a failed training run."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..defaults import SAMPLING_DEFAULTS
from ..errors import LatentDiffError

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


class _Renamed(argparse.Action):
    """An old flag spelling that still works for one release: stores into the new flag's dest, with a one-line note
    (once per command line, however often the flag is repeated)."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        super().__init__(option_strings, dest, **kw)
        self.new, self.noted = new, None

    def __call__(self, parser, namespace, values, option_string=None):
        if self.noted is not namespace:
            print(f"note: {option_string} is now {self.new}; the old spelling goes away in the next release", file=sys.stderr)
            self.noted = namespace
        setattr(namespace, self.dest, values)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept `old` as a hidden, retired spelling of `new` (same dest): one `note:` line on stderr when it is used."""
    parser.add_argument(old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


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
    add_device_args(p)
    p.add_argument("--attention", default="sdpa", help="sdpa, xformers or math")
    p.add_argument("--fast", action="store_const", const=True, default=None,
                   help="also tile the VAE decode of images over 1024 px (the levers BENCHMARKS.md proved for this device "
                        "and dtype are on by default: channels-last for bf16 on CPU)")
    p.add_argument("--no-fast", dest="fast", action="store_const", const=False,
                   help="turn every speed lever off (the plain eager path, for parity checks)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (slow first image; pays off over many)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: one per core)")
    p.add_argument("--vae", metavar="PATH", help="a separate VAE (diffusers vae folder or .safetensors) instead of the model's")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, both `auto` by default wherever a model is loaded to draw (generate ... serve)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto, fp32, fp16, bf16 (auto: fp16 on CUDA, bf16 on bf16-native CPUs, else fp32)")


def add_flag(p: argparse.ArgumentParser, flag: str, *aliases: str, **kw) -> argparse.Action:
    """`flag` and its permanent other spellings (README: Names): one dest, the aliases named in the flag's help and
    hidden from the usage line, so that an error names the spelling that was typed."""
    if aliases:
        kw["help"] = "; ".join(filter(None, (kw.get("help"), f"also spelt {', '.join(aliases)}")))
    action = p.add_argument(flag, **kw)
    for alias in aliases:
        p.add_argument(alias, **{**kw, "dest": action.dest, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS})
    return action


def add_steps_guidance(p: argparse.ArgumentParser) -> None:
    """--steps and --guidance, also spelt as the Python API's arguments."""
    add_flag(p, "--steps", "--num-inference-steps", type=int, default=None, metavar="N",
             help=f"sampler steps (default: the model's generation_config.json, else {SAMPLING_DEFAULTS['num_inference_steps']})")
    add_flag(p, "--guidance", "--guidance-scale", type=float, default=None, metavar="G",
             help=f"classifier-free guidance scale (default: the model's generation_config.json, else {SAMPLING_DEFAULTS['guidance_scale']})")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The drawing settings; where the Python argument has another name the flag takes it too (--num-images)."""
    add_flag(p, "--negative", "--negative-prompt", default="", metavar="TEXT", help="negative prompt")
    add_steps_guidance(p)
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale φ (0.7 for v-prediction)")
    p.add_argument("--clip-skip", type=int, default=0, help="use the n-th last CLIP layer")
    p.add_argument("--sampler", default=None, help=f"{SAMPLING_DEFAULTS['sampler']} (default, unless the model's generation_config.json says otherwise), "
                        "euler_a, euler, ddim, ddpm, pndm, unipc, dpmpp_2m_karras, heun, lms")
    p.add_argument("--schedule", default=None, help="sigma/timestep schedule (A1111's Schedule type): automatic (the sampler's own), "
                   "uniform, karras, exponential, beta, sgm_uniform, simple, trailing, leading, linspace")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, recorded in the PNG)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    add_flag(p, "--num", "--num-images", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    p.add_argument("--lora", action="append", default=[], type=_lora_arg, metavar="PATH[:WEIGHT]", help="LoRA file, repeatable")
    p.add_argument("--out", help="output PNG (default: the next numbered file in the current folder)")
    p.add_argument("--embeddings-dir", metavar="DIR", help="textual-inversion embeddings, used in the prompt by file name (as A1111's folder)")


def read_embeddings_arg(args) -> dict:
    """The embeddings `--embeddings-dir` names (read before the model loads, so a bad file fails early); {} without it."""
    if not getattr(args, "embeddings_dir", None):
        return {}
    from ..checkpoints.embeddings import read_embeddings

    return read_embeddings(args.embeddings_dir, allow_pickle=args.allow_pickle)


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
    from ..pipelines.png_metadata import save_png, save_png_numbered

    for image, params, path in zip(out.images, out.params, paths):
        written = save_png_numbered(image, params, ".") if path is None else save_png(image, params, path)
        print(f"{written}  seed {params.seed}")
    return 0


def check_request(p, num: int) -> None:
    """Fail on bad sampling settings before any model is loaded (`p`: steps, sampler, guidance, width, height and,
    where given, seed, guidance_rescale, clip_skip)."""
    from ..pipelines.base import check_size
    from ..pipelines.request import check_guidance, check_seed, generation_bytes
    from ..pipelines.samplers import check_sampler
    from ..runtime import check_fits

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
    if getattr(p, "schedule", None) is not None:
        from ..pipelines.samplers import check_schedule, schedule_options

        if p.sampler is None:
            check_schedule(p.schedule)
        else:
            schedule_options(p.sampler, p.schedule)
    if getattr(p, "seed", None) is not None:
        check_seed(p.seed, num)
    guidance = getattr(p, "guidance", getattr(p, "guidance_scale", None))  # a namespace of flags or GenerationParams
    check_guidance(1.0 if guidance is None else guidance, getattr(p, "guidance_rescale", 0.0) or 0.0)
    if (getattr(p, "clip_skip", 0) or 0) < 0:
        raise LatentDiffError(f"--clip-skip must be ≥ 0, got {p.clip_skip}")


def check_runtime(args) -> None:
    """--device, --dtype and --attention known here, before any model loads."""
    from ..models.attention import BACKENDS
    from ..runtime import parse_device, parse_dtype, configure_threads

    device = parse_device(args.device)
    parse_dtype(args.dtype, device)
    hint = configure_threads(getattr(args, "threads", None))  # --threads N; else a hint when the CPU is oversubscribed
    if hint and device.type == "cpu" and sys.stderr.isatty():  # for people at a terminal; logs and tests stay clean
        print(hint, file=sys.stderr)
    if args.attention not in BACKENDS:
        raise LatentDiffError(f"unknown attention {args.attention!r}; choose one of {', '.join(BACKENDS)}")


def load_pipeline(args):
    """The pipeline the model flags ask for (--model, --vae, --dtype, --lora, --embeddings-dir, ...), as generate,
    img2img and inpaint load it; says on stderr what --fast/--compile turned on."""
    from ..checkpoints.loader import resolve_model
    from ..pipelines import LatentDiffusionPipeline

    embeddings = read_embeddings_arg(args)
    pipe = LatentDiffusionPipeline.from_pretrained(resolve_model(args.model), device=args.device, dtype=args.dtype,
                                                   attention=args.attention, allow_pickle=args.allow_pickle,
                                                   prediction_type=args.prediction_type, fast=args.fast, compile=args.compile,
                                                   vae=args.vae)
    pipe.embeddings.update(embeddings)
    report_fast(pipe, args)
    if args.model in (None, "default"):
        pipe.model_name = "default"
    for path, weight in args.lora:
        pipe.load_lora(path, weight=weight)
    return pipe


def report_fast(pipe, args) -> None:
    """One line on stderr saying what --fast/--compile turned on here (BENCHMARKS.md lists what is proven faster)."""
    if not (args.fast or args.compile):
        return
    from ..fast import levers_for
    from ..runtime import DTYPE_NAMES

    where = f"{pipe.device.type} {DTYPE_NAMES.get(pipe.dtype, pipe.dtype)}"
    note = "" if levers_for(pipe.device, pipe.dtype) or not args.fast else f"; no speed lever is proven faster on {where} yet"
    print(f"fast: {', '.join(pipe.fast_levers) or 'nothing'} on {where}{note}", file=sys.stderr)


def _disposable(path: Path, folder: Path) -> bool:
    """Files a failed run may leave that are worth nothing alone: caches, logs, the config echo, temp files, TensorBoard."""
    parts = path.relative_to(folder).parts
    return ("cache" in parts or "tb" in parts or path.suffix == ".tmp" or path.name.startswith("pixels-")
            or path.name in ("latents.pt", "loss.csv", "log.csv", "train_config.json"))


def _first_missing(path: Path) -> Path:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) would create first)."""
    path = path.absolute()
    while not path.parent.exists():
        path = path.parent
    return path


@contextmanager
def removed_on_failure(*folders: str) -> Iterator[None]:
    """If the block fails, delete those of `folders` it created when they hold only caches and logs (never a checkpoint,
    weights or a validation image)."""
    fresh = [_first_missing(Path(f)) for f in folders if f and not Path(f).exists()]
    try:
        yield
    except BaseException:
        for folder in fresh:
            if folder.is_dir() and all(_disposable(p, folder) for p in folder.rglob("*") if not p.is_dir()):
                shutil.rmtree(folder, ignore_errors=True)
        raise
