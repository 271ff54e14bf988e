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
    "lcm": "LCM",
}
_BY_DISPLAY = {display: name for name, display in DISPLAY.items()}


def our_name(name: str, labels: dict[str, str], by_label: dict[str, str], what: str) -> str:
    """`name` if it is ours, ours for an A1111 label, else a one-line error listing ours."""
    if name in labels:
        return name
    if name in by_label:
        return by_label[name]
    raise LatentDiffError(f"unknown {what} {name!r}; choose one of {', '.join(labels)}")


def check_sampler(name: str) -> str:
    """Accept our short name or A1111's display name; fail with one line otherwise."""
    return our_name(name, DISPLAY, _BY_DISPLAY, "sampler")


# our schedule name → A1111's "Schedule type" label (A1111 ≥ 1.9, ComfyUI's scheduler names); the last three are
# diffusers' timestep spacings by name, which A1111 has no label for
SCHEDULES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "beta": "Beta",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "trailing": "trailing",
    "leading": "leading",
    "linspace": "linspace",
}
_SCHEDULE_BY_LABEL = {label: name for name, label in SCHEDULES.items()}


def check_schedule(name: str) -> str:
    """Accept our schedule name or A1111's label ("Karras", "SGM Uniform"); fail with one line otherwise."""
    return our_name(name, SCHEDULES, _SCHEDULE_BY_LABEL, "schedule")
