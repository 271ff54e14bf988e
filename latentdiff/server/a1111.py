"""A1111's request/response shapes (field names and defaults as its `/sdapi/v1` API) and their translation to ours."""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ..errors import LatentDiffError
from ..pipelines.samplers import SAMPLERS, check_sampler

# Fields A1111 clients send that we accept but do not honour: reported in `info["ignored"]` when set (truthy).
IGNORED_FIELDS = ("restore_faces", "tiling", "styles", "subseed_strength", "script_name", "alwayson_scripts",
                  "save_images", "inpainting_fill", "inpaint_full_res", "resize_mode", "initial_noise_multiplier",
                  "include_init_images", "image_cfg_scale")
SCHEDULERS = {"automatic": "Automatic", "karras": "Karras"}   # A1111's noise schedules that we can honour
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")


class Txt2ImgRequest(BaseModel):
    """POST /sdapi/v1/txt2img, A1111's field names; None means the model's default (generation_config.json)."""

    model_config = ConfigDict(extra="allow")
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None       # A1111 defaults to 512; we default to the model's native size
    height: int | None = None
    override_settings: dict[str, Any] = {}
    send_images: bool = True
    enable_hr: bool = False          # A1111's hires fix (pipelines.hires): base size, upscale, img2img
    hr_scale: float = 2.0
    hr_upscaler: str | None = None   # "Latent" (default), "Latent (nearest)", "Lanczos", ...
    hr_second_pass_steps: int = 0
    denoising_strength: float | None = None  # the hires pass's strength on txt2img (default 0.7)


class Img2ImgRequest(Txt2ImgRequest):
    """POST /sdapi/v1/img2img: txt2img's fields plus the input picture, mask and how much to redraw."""

    init_images: list[str] = []
    mask: str | None = None
    denoising_strength: float = 0.75
    mask_blur: float = 4
    inpainting_mask_invert: int = 0


class OptionsUpdate(BaseModel):
    """POST /sdapi/v1/options: only sd_model_checkpoint acts; other keys are kept and echoed by GET."""

    model_config = ConfigDict(extra="allow")
    sd_model_checkpoint: str | None = None


class PngInfoRequest(BaseModel):
    image: str


@dataclass
class Limits:
    """What one request may ask for; beyond it the server answers 4xx with the reason."""

    max_side: int = 1024            # width and height, pixels
    max_steps: int = 150
    max_batch: int = 8              # images per batch (batch_size)
    max_images: int = 16            # batch_size × n_iter
    max_prompt: int = 10_000        # characters
    max_body: int = 32 * 2**20      # bytes of one request
    max_input_pixels: int = 2048 * 2048


@dataclass
class Job:
    """One generation, in our terms: what the worker hands the pipeline (per batch) and what it reports back."""

    mode: str                        # "txt2img", "img2img" or "inpaint"
    prompt: str                      # without <lora:...> tags
    negative_prompt: str
    seed: int
    sampler: str | None
    steps: int | None
    cfg_scale: float | None
    width: int | None
    height: int | None
    batch_size: int
    n_iter: int
    loras: dict[str, float] = field(default_factory=dict)
    model: str | None = None         # override_settings.sd_model_checkpoint
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 0.75
    mask_blur: float = 0.0
    ignored: list[str] = field(default_factory=list)
    controls: list = field(default_factory=list)  # server.controlnet.ApiUnit per enabled ControlNet unit
    hires: Any = None                # pipelines.hires.HiresFix when enable_hr


def decode_image(text: str, what: str, limits: Limits) -> Image.Image:
    """A base64 PNG/JPEG (raw or data URL) → PIL image; one-line error for bad data or too many pixels."""
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]
    try:
        raw = base64.b64decode(text, validate=False)
        im = Image.open(io.BytesIO(raw))
    except (binascii.Error, ValueError, OSError):
        raise LatentDiffError(f"{what} is not a base64-encoded image") from None
    except Image.DecompressionBombError:
        raise LatentDiffError(f"{what} has too many pixels (over the limit of {limits.max_input_pixels})") from None
    if im.width * im.height > limits.max_input_pixels:
        raise LatentDiffError(f"{what} is {im.width}x{im.height}, over the limit of {limits.max_input_pixels} pixels")
    try:
        im.load()
    except OSError:
        raise LatentDiffError(f"{what} is a truncated or unreadable image") from None
    return im


def split_loras(prompt: str) -> tuple[str, dict[str, float]]:
    """Take A1111's `<lora:name:weight>` tags out of a prompt: (prompt without them, {name: weight})."""
    loras: dict[str, float] = {}
    for m in LORA_TAG.finditer(prompt):
        name, w = m.group(1).strip(), (m.group(2) or "1").strip()
        try:
            loras[name] = loras.get(name, 0.0) + float(w)
        except ValueError:
            raise LatentDiffError(f"LoRA weight must be a number in <lora:{name}:{w}>") from None
    clean = re.sub(r"\s{2,}", " ", LORA_TAG.sub("", prompt)).strip(" ,")
    return clean, loras


def resolve_sampler(name: str | None, scheduler: str | None) -> str | None:
    """A1111 sampler display name (or ours) + scheduler → our sampler name; None keeps the model's default."""
    sched = (scheduler or "automatic").strip().lower()
    if sched not in SCHEDULERS:
        raise LatentDiffError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS.values())}")
    if not name:
        return None if sched == "automatic" else "dpmpp_2m_karras"
    ours = check_sampler(name.strip())
    if sched == "karras":
        if ours not in ("dpmpp_2m", "dpmpp_2m_karras"):
            raise LatentDiffError(f"the Karras schedule is available with DPM++ 2M only, not {name!r}")
        return "dpmpp_2m_karras"
    return ours


def check_limits(req: Txt2ImgRequest, limits: Limits) -> None:
    """Size, steps, batch and prompt length within the server's limits; one-line reason otherwise."""
    for name in ("width", "height"):
        v = getattr(req, name)
        if v is None:
            continue
        if v <= 0 or v % 8:
            raise LatentDiffError(f"{name} must be a positive multiple of 8, got {v}")
        if v > limits.max_side:
            raise LatentDiffError(f"{name} {v} is over the server's limit of {limits.max_side}")
    if req.steps is not None and not 0 < req.steps <= limits.max_steps:
        raise LatentDiffError(f"steps must be in 1..{limits.max_steps}, got {req.steps}")
    if not 0 < req.batch_size <= limits.max_batch:
        raise LatentDiffError(f"batch_size must be in 1..{limits.max_batch}, got {req.batch_size}")
    if req.n_iter <= 0 or req.batch_size * req.n_iter > limits.max_images:
        raise LatentDiffError(f"batch_size × n_iter must be in 1..{limits.max_images}, got {req.batch_size * req.n_iter}")
    if len(req.prompt) + len(req.negative_prompt) > limits.max_prompt:
        raise LatentDiffError(f"prompt and negative prompt are over the limit of {limits.max_prompt} characters")
    if req.cfg_scale is not None and not 0 <= req.cfg_scale <= 100:
        raise LatentDiffError(f"cfg_scale must be in 0..100, got {req.cfg_scale}")


def ignored_fields(req: BaseModel) -> list[str]:
    """The fields the client set that this server accepts but does not act on."""
    extra = req.model_extra or {}
    out = [k for k in IGNORED_FIELDS if extra.get(k, getattr(req, k, None))]
    if "alwayson_scripts" in out:  # ControlNet units are honoured (server.controlnet); other scripts are not
        from .controlnet import other_scripts

        out = [k for k in out if k != "alwayson_scripts" or other_scripts(extra)]
    if isinstance(req, Img2ImgRequest) and len(req.init_images) > 1:
        out.append("init_images[1:]")
    return out


def to_job(req: Txt2ImgRequest, limits: Limits) -> Job:
    """Validate an A1111 request and translate it into a Job (seed -1 drawn here, so the answer can report it)."""
    import random

    check_limits(req, limits)
    prompt, loras = split_loras(req.prompt)
    sampler = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    seed = random.randrange(2**32) if req.seed is None or req.seed < 0 else req.seed
    model = (req.override_settings or {}).get("sd_model_checkpoint")
    job = Job("txt2img", prompt, req.negative_prompt, seed, sampler, req.steps, req.cfg_scale, req.width, req.height,
              req.batch_size, req.n_iter, loras, model, ignored=ignored_fields(req))
    from .controlnet import parse_units

    job.controls = parse_units(req.model_extra, limits)
    if req.enable_hr and not isinstance(req, Img2ImgRequest):
        from ..pipelines.hires import HiresFix

        job.hires = HiresFix(scale=float(req.hr_scale), steps=int(req.hr_second_pass_steps),
                             strength=0.7 if req.denoising_strength is None else float(req.denoising_strength),
                             upscaler=req.hr_upscaler or "Latent")
        big = [int((v or 512) * job.hires.scale) for v in (req.width, req.height)]  # unknown native size: A1111's 512
        if max(big) > limits.max_side:
            raise LatentDiffError(f"hires size {big[0]}x{big[1]} is over the server's limit of {limits.max_side}")
    if isinstance(req, Img2ImgRequest):
        if not req.init_images:
            raise LatentDiffError("img2img needs init_images (one base64 image)")
        if not 0.0 < req.denoising_strength <= 1.0:
            raise LatentDiffError(f"denoising_strength must be in (0, 1], got {req.denoising_strength}")
        if req.mask_blur < 0 or req.mask_blur > 64:
            raise LatentDiffError(f"mask_blur must be in 0..64, got {req.mask_blur}")
        job.mode, job.strength = "img2img", float(req.denoising_strength)
        job.init_image = decode_image(req.init_images[0], "init_images[0]", limits).convert("RGB")
        if req.mask:
            mask = decode_image(req.mask, "mask", limits).convert("L")
            if mask.size != job.init_image.size:  # A1111 resizes the mask with the picture
                mask = mask.resize(job.init_image.size, Image.NEAREST)
            if req.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            job.mode, job.mask, job.mask_blur, job.strength = "inpaint", mask, float(req.mask_blur), float(req.denoising_strength)
    return job


def samplers_list() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [{"name": display, "aliases": [name], "options": {}} for name, (_, _, display) in SAMPLERS.items()]


def schedulers_list() -> list[dict]:
    """GET /sdapi/v1/schedulers."""
    return [{"name": k, "label": v, "aliases": None, "default_rho": -1, "need_inner_model": False} for k, v in SCHEDULERS.items()]


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's `parameters` text → {"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...} (png-info)."""
    lines = text.strip().split("\n")
    out: dict[str, str] = {}
    last = lines[-1] if len(lines) > 1 or re.match(r"^\w[\w ]*: ", lines[-1]) else ""
    body = lines[:-1] if last else lines
    neg = [i for i, ln in enumerate(body) if ln.startswith("Negative prompt:")]
    if neg:
        out["Prompt"] = "\n".join(body[: neg[0]])
        out["Negative prompt"] = "\n".join(body[neg[0]:])[len("Negative prompt:"):].strip()
    else:
        out["Prompt"] = "\n".join(body)
    for m in re.finditer(r'\s*([\w ]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)', last):
        out[m.group(1).strip()] = m.group(2).strip()
    return out
