"""sd-webui-controlnet's API shapes: `alwayson_scripts.controlnet.args` units in txt2img/img2img requests.

A unit names a ControlNet from the server's --controlnet-dir by name ("name" or "name [hash]"), carries its control
image in base64, and the extension's settings. Preprocessors that need downloaded models are refused in one line
(send the ready map with module "none"); control_mode 2 ("ControlNet is more important") is diffusers' guess mode,
0 and 1 draw balanced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LatentDiffError
from .a1111 import Limits, decode_image

MODULES = {"none": "none", "canny": "canny", "invert": "invert", "invert (from white bg & black line)": "invert",
           "threshold": "threshold", "scribble": "scribble", "softedge": "softedge"}
RESIZE = {0: "just", 1: "crop", 2: "fill", "just resize": "just", "crop and resize": "crop", "resize and fill": "fill",
          "inner fit (scale to fit)": "crop", "outer fit (shrink to fit)": "fill", "envelope (outer fit)": "fill"}
GUESS = {2, "ControlNet is more important"}


@dataclass
class ApiUnit:
    """One enabled unit of a request, its image decoded; the ControlNet still a name the worker resolves."""

    model: str
    image: object          # PIL image
    weight: float
    start: float
    end: float
    module: str
    resize_mode: str
    guess_mode: bool
    low: float
    high: float


def _number(arg: dict, key: str, default: float, i: int) -> float:
    v = arg.get(key, default)
    if v is None or (isinstance(v, (int, float)) and v == -1 and key.startswith("threshold")):
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LatentDiffError(f"controlnet unit {i}: {key} must be a number, got {v!r}")
    return float(v)


def parse_units(extra: dict | None, limits: Limits) -> list[ApiUnit]:
    """The enabled ControlNet units of a request's `alwayson_scripts` (none when absent)."""
    scripts = (extra or {}).get("alwayson_scripts") or {}
    block = scripts.get("controlnet") or scripts.get("ControlNet") or {}
    args = block.get("args", []) if isinstance(block, dict) else []
    units = []
    for i, arg in enumerate(args):
        if not isinstance(arg, dict) or not arg.get("enabled", True):
            continue
        module = str(arg.get("module", "none")).strip().lower()
        if module not in MODULES:
            raise LatentDiffError(f"controlnet unit {i}: module {module!r} needs a model this server does not have; "
                                  f"send the ready map with module 'none' (modules: {', '.join(sorted(set(MODULES.values())))})")
        image = arg.get("image") or arg.get("input_image")
        if isinstance(image, dict):
            image = image.get("image")
        if not isinstance(image, str) or not arg.get("model"):
            raise LatentDiffError(f"controlnet unit {i} needs a model name and a base64 image")
        mode = arg.get("resize_mode", 1)
        resize = RESIZE.get(mode if isinstance(mode, int) else str(mode).strip().lower())
        if resize is None:
            raise LatentDiffError(f"controlnet unit {i}: unknown resize_mode {mode!r}")
        units.append(ApiUnit(str(arg["model"]), decode_image(image, f"controlnet unit {i} image", limits).convert("RGB"),
                             _number(arg, "weight", 1.0, i), _number(arg, "guidance_start", 0.0, i),
                             _number(arg, "guidance_end", 1.0, i), MODULES[module], resize, arg.get("control_mode", 0) in GUESS,
                             _number(arg, "threshold_a", 100.0, i), _number(arg, "threshold_b", 200.0, i)))
    return units


def other_scripts(extra: dict | None) -> bool:
    """True when `alwayson_scripts` names a script other than ControlNet (reported as ignored)."""
    scripts = (extra or {}).get("alwayson_scripts") or {}
    return any(k.lower() != "controlnet" for k in scripts) if isinstance(scripts, dict) else bool(scripts)
