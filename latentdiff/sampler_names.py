"""Our sampler names, A1111's display names for them, and the check of a name: data only, so every layer may import
it (checkpoints.loader checks a model's generation_config.json with it; pipelines.samplers maps names to schedulers)."""

from __future__ import annotations

from .errors import LatentDiffError

# our name → A1111's display name, in the order the help and errors list them
DISPLAY = {
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
}
_BY_DISPLAY = {display: name for name, display in DISPLAY.items()}


def check_sampler(name: str) -> str:
    """Accept our short name or A1111's display name; fail with one line otherwise."""
    if name in DISPLAY:
        return name
    if name in _BY_DISPLAY:
        return _BY_DISPLAY[name]
    raise LatentDiffError(f"unknown sampler {name!r}; choose one of {', '.join(DISPLAY)}")
