"""`--replay PNG`: the settings a PNG was drawn with (ours or A1111's), found files, and flags that override them.

Replay uses every setting the PNG records (dtype included) unless a flag on the command line says otherwise. A
latentdiff PNG carries a JSON chunk with all of them; an A1111 PNG only its `parameters` text, which is redrawn with
our nearest settings and one notice per setting that cannot be honoured. Model and LoRA files are looked for where
the PNG recorded them, then next to the PNG, then in the current folder; a hash that differs from the recorded one
is a warning, not an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..defaults import DEFAULT_SAMPLER
from ..errors import LatentDiffError
from ..hashes import legacy_model_hash, lora_hash, model_hash
from .png_metadata import JSON_KEY, GenerationParams, parse_a1111
from .samplers import sampler_from_a1111, schedule_from_a1111

# flags whose parser default is not None: given on the command line when the value differs from these
FLAG_DEFAULTS = {"negative": "", "guidance_rescale": 0.0, "clip_skip": 0, "dtype": "auto", "num": 1}
EDIT_DEFAULTS = {"img2img": {"strength": 0.75},
                 "inpaint": {"strength": 1.0, "mask_threshold": 0.5, "mask_blur": 0.0, "overlay": True}}
# PNG extra key → (argument, type) that img2img/inpaint replay restores
REPLAYED = {"img2img": {"Denoising strength": ("strength", float)},
            "inpaint": {"Denoising strength": ("strength", float), "Mask threshold": ("mask_threshold", float),
                        "Mask blur": ("mask_blur", float), "Overlay original": ("overlay", lambda v: str(v) == "True")}}
DTYPE_FLAGS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
MODEL_SUFFIXES = ("", ".safetensors", ".ckpt")
_NETWORK_TAG = re.compile(r"\s*<(lora|lyco|hypernet):([^:>]+)(?::([^:>]*))?[^>]*>")
# A1111 keys read into GenerationParams (or checked) by `from_a1111`; every other key is a notice
_A1111_READ = {"Steps", "Sampler", "Schedule type", "Eta DDIM", "CFG scale", "Seed", "Size", "Model hash", "Model",
               "Clip skip", "CFG Rescale", "Lora hashes", "Version", "Denoising strength", "Init image hash", "Mask hash",
               "Hires upscale", "Hires steps", "Hires upscaler"}
_A1111_WHY = {"Hires": "not one of ours; the hires pass uses the first pass's setting", "Face restoration": "face restoration is not one of ours",
              "RNG": "our noise comes from a CPU generator", "VAE": "the model's own VAE is used",
              "TI hashes": "embeddings are read from --embeddings-dir by name, not checked by hash", "Variation seed": "variation seeds are not one of ours",
              "Seed resize from": "seed resizing is not one of ours", "ENSD": "eta noise seed delta is not one of ours",
              "Refiner": "refiner models are not one of ours", "ADetailer": "ADetailer is not one of ours",
              "ControlNet": "an A1111 PNG does not carry its control images; give --control PATH:IMAGE to draw with it"}


@dataclass
class ReplaySource:
    """What a PNG says it was drawn with, and where it came from."""

    params: GenerationParams
    origin: str                                   # "latentdiff" or "a1111"
    png: Path
    notices: list[str] = field(default_factory=list)
    lora_names: list[tuple[str, float, str]] = field(default_factory=list)  # A1111: (name, weight, hash)
    model_name: str = ""                          # A1111's `Model` (a file stem)


def read_replay(path: str | Path) -> ReplaySource:
    """The settings a PNG carries: our JSON chunk, else A1111's `parameters` text; one-line error for other files."""
    png = Path(path)
    if not png.is_file():
        raise LatentDiffError(f"no such image: {png}")
    try:
        with Image.open(png) as im:
            text = {**getattr(im, "text", {}), **{k: v for k, v in im.info.items() if isinstance(v, str)}}
    except OSError:
        raise LatentDiffError(f"{png} is not a readable image") from None
    if text.get(JSON_KEY):
        try:
            return ReplaySource(GenerationParams.from_json(text[JSON_KEY]), "latentdiff", png)
        except (ValueError, TypeError):
            raise LatentDiffError(f"{png}: its latentdiff parameters chunk does not parse") from None
    if text.get("parameters"):
        return from_a1111(text["parameters"], png)
    raise LatentDiffError(f"{png} carries no generation parameters (neither latentdiff's nor A1111's)")


def from_a1111(text: str, png: Path = Path(".")) -> ReplaySource:
    """Our nearest settings for an A1111 `parameters` text, with a notice for each setting we cannot honour."""
    prompt, negative, kv = parse_a1111(text)
    if not kv:
        raise LatentDiffError(f"{png}: its A1111 parameters have no settings line (Steps, Sampler, ...)")
    notices: list[str] = []
    networks = [(m.group(1), m.group(2), m.group(3)) for m in _NETWORK_TAG.finditer(prompt)]
    prompt = _NETWORK_TAG.sub("", prompt).strip()
    hashes = dict(_split_pairs(kv.get("Lora hashes", "")))
    loras = []
    for kind, name, weight in networks:
        if kind == "hypernet":
            notices.append(f"hypernetwork {name!r}: hypernetworks are not one of ours")
            continue
        loras.append((name, _number(weight, 1.0, f"<{kind}:{name}> weight", notices), hashes.get(name, "")))
    sampler, sampler_notes = sampler_from_a1111(kv)
    notices += sampler_notes
    if sampler is None:
        sampler = DEFAULT_SAMPLER
        notices[-1] += f"; drawing with {DEFAULT_SAMPLER}"
    width, _, height = kv.get("Size", "512x512").partition("x")
    p = GenerationParams(prompt=prompt, negative_prompt=negative, sampler=sampler, schedule=schedule_from_a1111(kv),
                         steps=int(_number(kv.get("Steps"), 20, "Steps", notices)),
                         guidance_scale=_number(kv.get("CFG scale"), 7.0, "CFG scale", notices),
                         seed=int(_number(kv.get("Seed"), 0, "Seed", notices)),
                         width=int(_number(width, 512, "Size", notices)), height=int(_number(height, 512, "Size", notices)),
                         model_hash=kv.get("Model hash", ""),
                         clip_skip=max(int(_number(kv.get("Clip skip"), 1, "Clip skip", notices)) - 1, 0),
                         guidance_rescale=_number(kv.get("CFG Rescale"), 0.0, "CFG Rescale", notices))
    for key in ("Denoising strength", "Init image hash", "Mask hash"):
        if key in kv:
            p.extra[key] = kv[key]
    for key in ("Hires upscale", "Hires steps", "Hires upscaler"):  # the hires fix (pipelines.hires) reads them back
        if key in kv:
            p.extra[key] = kv[key]
    for key, value in kv.items():
        if key not in _A1111_READ and not (key == "RNG" and value == "CPU"):
            why = next((w for prefix, w in _A1111_WHY.items() if key.startswith(prefix)), "not one of ours")
            notices.append(f"{key}: {value} — {why}")
    if "RNG" not in kv:
        notices.append("RNG: GPU (A1111's default) — our noise comes from a CPU generator, so the picture will differ")
    return ReplaySource(p, "a1111", png, notices, loras, kv.get("Model", ""))


def _split_pairs(text: str) -> list[tuple[str, str]]:
    """`name: hash, name2: hash2` → [(name, hash), ...]."""
    out = []
    for part in text.split(","):
        name, sep, value = part.rpartition(":")
        if sep:
            out.append((name.strip(), value.strip()))
    return out


def _number(text, default: float, what: str, notices: list[str]) -> float:
    """float(text), or `default` with a notice when it is missing or not a finite number."""
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        notices.append(f"{what}: {text!r} is not a number; using {default:g}")
        return default
    return value


# -- finding files --------------------------------------------------------------------------------------------------
def find_file(recorded: str, png: Path, suffixes: tuple[str, ...] = ("",)) -> Path | None:
    """`recorded` as written, then its name next to the PNG, then in the current folder (each with `suffixes`)."""
    rec = Path(recorded)
    candidates = [rec] if rec.is_absolute() else [rec, png.parent / rec]
    candidates += [png.parent / rec.name, Path.cwd() / rec.name]
    for c in candidates:
        for suffix in suffixes:
            path = c.with_name(c.name + suffix) if suffix else c
            if path.exists():
                return path
    return None


def _check_hash(what: str, path: Path, recorded: str, compute, warnings: list[str]) -> None:
    """A warning line when the file's hash is not the one the PNG recorded."""
    if recorded:
        actual = legacy_model_hash(path) if compute is model_hash and len(recorded) == 8 and path.is_file() else compute(path)
        if actual != recorded[:len(actual)] and recorded != actual[:len(recorded)]:
            warnings.append(f"warning: {what} {path} has hash {actual}, the PNG recorded {recorded}; the picture may differ")


# -- applying to parsed arguments -------------------------------------------------------------------------------------
def drawn_by(p: GenerationParams) -> str:
    """The command a latentdiff PNG was drawn by: generate, img2img or inpaint."""
    if "Init image hash" in p.extra:
        return "inpaint" if "Mask hash" in p.extra else "img2img"
    return "generate"


def apply_replay(args, mode: str) -> tuple[list[str], dict[str, str]]:
    """Fill `args` from `--replay PNG` where no flag was given; (lines to print on stderr, input hashes to check)."""
    src = read_replay(args.replay)
    p = src.params
    by = drawn_by(p)
    if src.origin == "latentdiff" and by != mode and mode == "generate":
        raise LatentDiffError(f"{args.replay} was drawn by {by} from an input picture; redraw it with `latentdiff {by} "
                              f"--image INPUT{' --mask MASK' if by == 'inpaint' else ''} --replay {args.replay}`")
    if src.origin == "latentdiff" and by != mode:
        raise LatentDiffError(f"{args.replay} was drawn by {by}, not {mode}; replay it with `latentdiff {by}"
                              f"{'' if by == 'generate' else ' --image INPUT'}{' --mask MASK' if by == 'inpaint' else ''}"
                              f" --replay {args.replay}`")
    lines = [f"note: {n}" for n in src.notices]
    for name, value in (("prompt", p.prompt), ("negative", p.negative_prompt), ("steps", p.steps), ("sampler", p.sampler),
                        ("schedule", p.schedule),
                        ("guidance", p.guidance_scale), ("seed", p.seed), ("width", p.width), ("height", p.height),
                        ("guidance_rescale", p.guidance_rescale), ("clip_skip", p.clip_skip)):
        if getattr(args, name, None) == FLAG_DEFAULTS.get(name):
            setattr(args, name, value)
    if args.dtype == "auto" and p.dtype:
        args.dtype = DTYPE_FLAGS.get(p.dtype, p.dtype)
        if args.dtype == "fp16" and (str(args.device).startswith("cpu") or (args.device == "auto" and not _cuda())):
            args.dtype = "fp32"
            lines.append("note: drawn in fp16, which this CPU cannot run; drawing in fp32")
    _replay_model(args, src, lines)
    _replay_loras(args, src, lines)
    expected = {}
    if mode in REPLAYED:
        defaults = EDIT_DEFAULTS[mode]
        for key, (name, kind) in REPLAYED[mode].items():
            if key in p.extra and getattr(args, name) == defaults[name]:
                setattr(args, name, kind(p.extra[key]))
        if src.origin == "a1111":
            lines.append("note: an A1111 PNG does not say which input picture it was drawn from; --image is not checked")
        else:
            expected = {"image": p.extra["Init image hash"], "mask": p.extra.get("Mask hash", "")}
    elif mode == "generate" and "Hires upscale" in p.extra:
        if getattr(args, "hires_scale", None) is None:
            args.hires_scale, args.hires_steps = float(p.extra["Hires upscale"]), int(p.extra.get("Hires steps", 0) or 0)
            args.hires_strength = float(p.extra.get("Denoising strength", 0.7))
            args.hires_upscaler = str(p.extra.get("Hires upscaler", "Latent"))
    elif src.origin == "a1111" and "Denoising strength" in p.extra:
        lines.append("note: this PNG was drawn by img2img from an input picture it does not carry; drawing it from noise")
    return lines, expected


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _replay_model(args, src: ReplaySource, lines: list[str]) -> None:
    """args.model from the PNG unless --model was given: found next to the PNG or here; hash checked."""
    p = src.params
    if args.model is not None:
        if p.model_hash and Path(args.model).exists():
            _check_hash("model", Path(args.model), p.model_hash, model_hash, lines)
        return
    if src.origin == "latentdiff":
        if p.model in ("", "default"):
            args.model = None
            return
        found = find_file(p.model, src.png)
        if found is None:
            raise LatentDiffError(f"the model {p.model} that {src.png} was drawn with is not there, nor next to the PNG, "
                                  f"nor in the current folder; give --model PATH")
        args.model = str(found)
        _check_hash("model", found, p.model_hash, model_hash, lines)
        return
    name = src.model_name
    found = find_file(name, src.png, MODEL_SUFFIXES) if name and name != "default" else None
    if found is None:
        args.model = None
        if name != "default":
            lines.append(f"note: model {name or '(unnamed)'}{f' [{p.model_hash}]' if p.model_hash else ''} is not next to "
                         f"the PNG nor in the current folder; drawing with the embedded default model")
        return
    args.model = str(found)
    _check_hash("model", found, p.model_hash, model_hash, lines)


def _replay_loras(args, src: ReplaySource, lines: list[str]) -> None:
    """args.lora from the PNG unless --lora was given: each file found next to the PNG or here; hashes checked."""
    if args.lora:
        return
    p = src.params
    found_loras = []
    if src.origin == "latentdiff":
        for path, weight in p.loras:
            found = find_file(path, src.png)
            if found is None:
                raise LatentDiffError(f"the LoRA {path} that {src.png} was drawn with is not there, nor next to the PNG, "
                                      f"nor in the current folder; give --lora PATH[:WEIGHT]")
            _check_hash("LoRA", found, p.lora_hashes.get(path, ""), lora_hash, lines)
            found_loras.append((str(found), float(weight)))
    else:
        for name, weight, recorded in src.lora_names:
            found = find_file(name, src.png, (".safetensors",))
            if found is None:
                lines.append(f"note: LoRA {name!r} is not next to the PNG nor in the current folder; drawing without it")
                continue
            _check_hash("LoRA", found, recorded, lora_hash, lines)
            found_loras.append((str(found), weight))
    args.lora = found_loras


__all__ = ["ReplaySource", "apply_replay", "drawn_by", "find_file", "from_a1111", "read_replay"]
