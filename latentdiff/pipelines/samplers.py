"""Sampler names (A1111/k-diffusion style) → diffusers schedulers built from the model's scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from ..errors import LatentDiffError

# name → (scheduler class, config overrides, A1111's display name)
SAMPLERS = {
    "ddim": (DDIMScheduler, {}, "DDIM"),
    "ddpm": (DDPMScheduler, {}, "DDPM"),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, "PLMS"),
    "euler": (EulerDiscreteScheduler, {}, "Euler"),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "heun": (HeunDiscreteScheduler, {}, "Heun"),
    "lms": (LMSDiscreteScheduler, {}, "LMS"),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}, "DPM++ 2M"),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "unipc": (UniPCMultistepScheduler, {}, "UniPC"),
}
_BY_DISPLAY = {display: name for name, (_, _, display) in SAMPLERS.items()}


def check_sampler(name: str) -> str:
    """Accept our short name or A1111's display name; fail with one line otherwise."""
    if name in SAMPLERS:
        return name
    if name in _BY_DISPLAY:
        return _BY_DISPLAY[name]
    raise LatentDiffError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler of the named kind carrying the model's training schedule (betas, prediction type)."""
    cls, overrides, _ = SAMPLERS[check_sampler(name)]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})


def display_name(name: str) -> str:
    return SAMPLERS[check_sampler(name)][2]
