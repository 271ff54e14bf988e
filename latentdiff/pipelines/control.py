"""ControlNet guidance as a wrapper around the U-Net (k-diffusion style: the sampler and CFG only see a U-Net).

`ControlledUNet` runs each active ControlNet on the same batch the U-Net gets and adds the summed residuals to the
U-Net's skip and middle features (Zhang et al. 2023, https://arxiv.org/abs/2302.05543). A unit is active at step i of
n when start ≤ i/n and (i+1)/n ≤ end, as diffusers' `control_guidance_start/end`. In guess mode it runs on the
conditional half of a guided batch only, with diffusers' 0.1 → 1 residual scales, and the unconditional half gets none.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LatentDiffError
from ..imaging import flatten_alpha
from .control_images import MODULES, RESIZE_MODES, fit, preprocess, resize_mode
from .images import ImageInput, open_image


@dataclass
class ControlUnit:
    """One ControlNet at work: the network, its control image, and how strongly and over which steps it steers."""

    model: str | os.PathLike | object  # ControlNet file or folder, or a loaded models.controlnet.ControlNet
    image: ImageInput                  # the control image (or the picture a preprocessor makes it from)
    weight: float = 1.0                # conditioning scale
    start: float = 0.0                 # fraction of the steps after which it starts
    end: float = 1.0                   # fraction of the steps after which it stops
    module: str = "none"               # preprocessor: none, invert, canny, softedge, threshold, scribble
    resize_mode: str = "crop"          # just | crop | fill (A1111's Just Resize, Crop and Resize, Resize and Fill)
    guess_mode: bool = False           # residuals on the conditional branch only, scaled 0.1 → 1 (diffusers' guess_mode)
    low_threshold: float = 100         # canny low / threshold cut
    high_threshold: float = 200        # canny high

    def check(self) -> None:
        for name in ("weight", "start", "end", "low_threshold", "high_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise LatentDiffError(f"ControlNet {name.replace('_', ' ')} must be a finite number, got {v}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise LatentDiffError(f"ControlNet guidance start/end must satisfy 0 ≤ start < end ≤ 1, got {self.start:g} and {self.end:g}")
        if self.module not in MODULES:
            raise LatentDiffError(f"unknown control preprocessor {self.module!r}; choose one of {', '.join(MODULES)}")
        self.resize_mode = resize_mode(self.resize_mode)


@dataclass
class PreparedUnit:
    """A unit ready to run: its network on the pipeline's device and its control image as a tensor."""

    unit: ControlUnit
    net: torch.nn.Module
    cond: torch.Tensor          # (1, 3, H, W) in [0, 1]
    image_hash: str             # sha256[:10] of the control image file (or of its pixels)
    model_path: str
    model_hash: str             # sha256[:8], as sd-webui-controlnet shows it

    def active(self, i: int, n: int) -> bool:
        return self.unit.start <= i / n and (i + 1) / n <= self.unit.end

    def residuals(self, x: torch.Tensor, t, context: torch.Tensor, guided: bool,
                  added: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (n, C[+C'], h, w) as the U-Net gets it → residuals for every skip feature and the middle block.

        `added`: SDXL's added_cond_kwargs for the same n rows (pooled text, time ids)."""
        lat = x[:, :self.net.config.unet.in_channels]  # an inpainting U-Net's extra channels are not the ControlNet's
        guess = self.unit.guess_mode or self.net.config.global_pool_conditions
        if guess and guided:
            half = lat.shape[0] // 2  # [uncond; cond]: control the conditional half only
            cond_added = {k: v[half:] for k, v in added.items()} if added else None
            down, mid = self.net(lat[half:], t, context[half:], self.cond.expand(half, -1, -1, -1), self.unit.weight, True,
                                 cond_added)
            return [torch.cat([torch.zeros_like(d), d]) for d in down], torch.cat([torch.zeros_like(mid), mid])
        return self.net(lat, t, context, self.cond.expand(lat.shape[0], -1, -1, -1), self.unit.weight, guess, added)


class ControlledUNet:
    """The U-Net with the residuals of the active ControlNets added; counts its calls as sampler steps."""

    def __init__(self, unet, units: list[PreparedUnit], steps: int, guided: bool):
        self.unet, self.units, self.steps, self.guided = unet, units, steps, guided
        self.calls = 0

    @property
    def config(self):
        return getattr(self.unet, "config", None)

    def __call__(self, x: torch.Tensor, t, context: torch.Tensor, x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        down = mid = None
        added = ({"text_embeds": self.unet.text_embeds, "time_ids": self.unet.time_ids}  # bound by pipelines.sdxl.condition
                 if hasattr(self.unet, "time_ids") else None)
        for u in self.units:
            if not u.active(i, self.steps):
                continue
            d, m = u.residuals(x, t, context, self.guided, added)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return self.unet(x, t, context, x_self_cond=x_self_cond, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)


def load_net(pipe, model, allow_pickle: bool = False):
    """(network on the pipeline's device and dtype, path, hash); loaded files are cached on the pipeline."""
    from ..checkpoints.controlnet import load_controlnet
    from ..hashes import model_hash

    if isinstance(model, torch.nn.Module):
        return model.to(pipe.device, pipe.dtype), "", ""
    cache = pipe.__dict__.setdefault("_controlnets", {})
    key = str(Path(model).resolve())
    if key not in cache:
        net = load_controlnet(model, allow_pickle=allow_pickle, base=pipe.unet.config).to(pipe.device, pipe.dtype)
        if net.config.unet.cross_attention_dim != pipe.unet.config.cross_attention_dim:
            raise LatentDiffError(f"ControlNet {model} reads {net.config.unet.cross_attention_dim}-d text embeddings, "
                                  f"this model makes {pipe.unet.config.cross_attention_dim}-d ones (an SD1 ControlNet on SD2, or the reverse)")
        cache[key] = (net, str(model), model_hash(model)[:8])
    net, path, digest = cache[key]
    return net.to(pipe.device, pipe.dtype), path, digest  # the pipeline may have moved since


def prepare(pipe, unit: ControlUnit, width: int, height: int, allow_pickle: bool = False) -> PreparedUnit:
    """Load the network, and read, fit (resize mode) and preprocess the control image at width×height."""
    unit.check()
    net, path, digest = load_net(pipe, unit.model, allow_pickle)
    raw, sha = open_image(unit.image, "control image")
    image = preprocess(fit(flatten_alpha(raw).convert("RGB"), width, height, unit.resize_mode), unit.module,
                       unit.low_threshold, unit.high_threshold)
    cond = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
    return PreparedUnit(unit, net, cond.to(pipe.device, pipe.dtype), sha, path, digest)


def controlled_unet(pipe, controls: list[ControlUnit] | None, width: int, height: int, steps: int, guided: bool, unet=None):
    """(the U-Net to sample with, the PNG entries of the units, their JSON records): `unet` (default pipe.unet; any
    callable taking the U-Net's (x, t, context, x_self_cond, down/mid residuals), e.g. one with added conditioning
    bound) itself when there are no controls."""
    unet = pipe.unet if unet is None else unet
    if not controls:
        return unet, {}, []
    units = [prepare(pipe, c, width, height) for c in controls]
    return ControlledUNet(unet, units, steps, guided), a1111_units(units, width, height), [unit_record(u) for u in units]


def a1111_units(units: list[PreparedUnit], width: int, height: int) -> dict[str, str]:
    """{"ControlNet i": "Module: …, Model: …, …"} as sd-webui-controlnet writes its infotext (no `,` or `:` in values)."""
    out = {}
    for i, u in enumerate(units):
        c = u.unit
        name = Path(u.model_path).stem.replace(",", "").replace(":", "") if u.model_path else "in-memory"
        fields = {"Module": c.module, "Model": f"{name} [{u.model_hash}]" if u.model_hash else name, "Weight": f"{c.weight:g}",
                  "Resize Mode": RESIZE_MODES[c.resize_mode], "Processor Res": min(width, height),
                  "Threshold A": f"{c.low_threshold:g}", "Threshold B": f"{c.high_threshold:g}",
                  "Guidance Start": f"{c.start:g}", "Guidance End": f"{c.end:g}", "Pixel Perfect": True,
                  "Control Mode": "ControlNet is more important" if c.guess_mode else "Balanced"}
        out[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return out


def unit_record(u: PreparedUnit) -> dict:
    """What the JSON chunk keeps of a unit to draw it again: its settings, files and their hashes."""
    d = {k: v for k, v in asdict(u.unit).items() if k not in ("model", "image")}
    image = u.unit.image if isinstance(u.unit.image, (str, os.PathLike)) else ""
    return {**d, "model": u.model_path, "model_hash": u.model_hash, "image": str(image), "image_hash": u.image_hash}


def unit_from_record(d: dict, model: str, image: str) -> ControlUnit:
    """A ControlUnit from unit_record's dict, with the files found for it."""
    keys = {"weight", "start", "end", "module", "resize_mode", "guess_mode", "low_threshold", "high_threshold"}
    return ControlUnit(model=model, image=image, **{k: v for k, v in d.items() if k in keys})


def with_controls(params: list, records: list[dict]) -> list:
    """The GenerationParams of a call, each carrying the ControlNet units it was drawn with."""
    for p in params:
        p.controls = [dict(r) for r in records]
    return params
