"""Sampler names (A1111/k-diffusion style) → diffusers schedulers built from the model's scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

import inspect

from ..errors import LatentDiffError
from ..sampler_names import _SCHEDULE_BY_LABEL, DISPLAY, SCHEDULES, check_sampler, check_schedule  # noqa: F401  (pipelines import the checks from here)

# name → (scheduler class, config overrides, A1111's display name); the names and display names live in sampler_names
_SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "lcm": (LCMScheduler, {}),  # latent consistency models (Luo et al. 2023, https://arxiv.org/abs/2310.04378)
}
SAMPLERS = {name: (*_SCHEDULERS[name], display) for name, display in DISPLAY.items()}

# schedule → diffusers scheduler options (diffusers' table "Noise schedules and schedule types": Karras
# https://arxiv.org/abs/2206.00364, exponential, beta https://arxiv.org/abs/2407.12173, sgm_uniform/simple = trailing
# spacing https://arxiv.org/abs/2305.08891); a False flag a scheduler lacks is dropped, a True one or a spacing it lacks is refused
_UNIFORM = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULE_OPTIONS: dict[str, dict] = {
    "automatic": {},
    "uniform": _UNIFORM,
    "karras": {**_UNIFORM, "use_karras_sigmas": True},
    "exponential": {**_UNIFORM, "use_exponential_sigmas": True},
    "beta": {**_UNIFORM, "use_beta_sigmas": True},
    "sgm_uniform": {**_UNIFORM, "timestep_spacing": "trailing"},
    "simple": {**_UNIFORM, "timestep_spacing": "trailing"},
    "trailing": {"timestep_spacing": "trailing"},
    "leading": {"timestep_spacing": "leading"},
    "linspace": {"timestep_spacing": "linspace"},
}


def schedule_options(name: str, schedule: str = "automatic") -> dict:
    """The diffusers options a schedule sets on this sampler's scheduler; one-line error when it has none for it."""
    cls = SAMPLERS[check_sampler(name)][0]
    accepted = inspect.signature(cls.__init__).parameters
    out = {}
    for key, value in SCHEDULE_OPTIONS[check_schedule(schedule)].items():
        if key in accepted:
            out[key] = value
        elif value is not False:
            raise LatentDiffError(f"schedule {schedule!r} is not available for sampler {name!r} "
                                  f"(diffusers' {cls.__name__} has no {key})")
    return out


def make_scheduler(name: str, base_config: dict, schedule: str = "automatic"):
    """A fresh scheduler of the named kind and schedule carrying the model's training schedule (betas, prediction type)."""
    cls, overrides, _ = SAMPLERS[check_sampler(name)]
    accepted = inspect.signature(cls.__init__).parameters  # keys of other schedulers (PNDM's skip_prk_steps) stay out
    config = {k: v for k, v in base_config.items() if not k.startswith("_") and k in accepted}
    return cls.from_config({**config, **overrides, **schedule_options(name, schedule)})


def display_name(name: str) -> str:
    """A1111's pre-1.9 display name (one string, schedule included), as `--sampler` also accepts."""
    return SAMPLERS[check_sampler(name)][2]


# -- A1111 infotext: what we write, and how A1111 ≥ 1.9 and older versions read it back ------------------------------
# A1111 1.9 split "DPM++ 2M Karras" into `Sampler: DPM++ 2M` + `Schedule type: Karras`. Its parser
# (modules/sd_samplers.get_sampler_and_scheduler) strips a schedule suffix from the sampler name, takes the schedule
# from "Schedule type" (missing → "Automatic"), and "Automatic" means the sampler's own default schedule: Karras for
# DPM++ 2M, the model's uniform sigmas for Euler/Euler a/LMS/Heun. It writes "Schedule type" only when the resolved
# schedule is not the model's own, so DPM++ 2M always carries one from 1.9 on; a `Sampler: DPM++ 2M` without a schedule
# comes from an older A1111 (or older latentdiff) and meant the uniform schedule then.
# name → infotext fields A1111 reads back as the same sampler and schedule
A1111_FIELDS: dict[str, dict[str, str]] = {
    "ddim": {"Sampler": "DDIM"},
    "ddpm": {"Sampler": "DDIM", "Eta DDIM": "1"},  # DDPM's posterior variance is DDIM's at η = 1; A1111 has no "DDPM"
    "pndm": {"Sampler": "PLMS"},
    "euler": {"Sampler": "Euler"},
    "euler_a": {"Sampler": "Euler a"},
    "heun": {"Sampler": "Heun"},
    "lms": {"Sampler": "LMS"},
    "dpmpp_2m": {"Sampler": "DPM++ 2M", "Schedule type": "Uniform"},
    "dpmpp_2m_karras": {"Sampler": "DPM++ 2M", "Schedule type": "Karras"},
    "unipc": {"Sampler": "UniPC"},
    "lcm": {"Sampler": "LCM"},
}
# A1111 schedule labels (modules/sd_schedulers.py), longest first so "SGM Uniform" wins over "Uniform" as a suffix
A1111_SCHEDULES = ("Karras Exponential", "Polyexponential", "Align Your Steps", "SGM Uniform", "KL Optimal",
                   "Exponential", "Automatic", "Uniform", "Karras", "Simple", "Normal", "Beta", "DDIM")
# A1111 sampler names and old aliases → (our sampler for the model's uniform schedule, ours for Karras or None)
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "DPM++ 2M": ("dpmpp_2m", "dpmpp_2m_karras"), "k_dpmpp_2m": ("dpmpp_2m", "dpmpp_2m_karras"),
    "Euler": ("euler", None), "k_euler": ("euler", None),
    "Euler a": ("euler_a", None), "k_euler_a": ("euler_a", None), "k_euler_ancestral": ("euler_a", None),
    "Heun": ("heun", None), "k_heun": ("heun", None), "LMS": ("lms", None), "k_lms": ("lms", None),
    "DDIM": ("ddim", None), "PLMS": ("pndm", None), "UniPC": ("unipc", None), "DDPM": ("ddpm", None),
    "LCM": ("lcm", None),
}
_TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC", "DDPM", "LCM")  # A1111 ignores the schedule for these
_DEFAULT_SCHEDULE = {"DPM++ 2M": "Karras", "k_dpmpp_2m": "Karras"}  # what "Automatic" means for the sampler in A1111 ≥ 1.9


def a1111_fields(name: str, schedule: str = "automatic") -> dict[str, str]:
    """The infotext fields (`Sampler`, maybe `Schedule type`, `Eta DDIM`) A1111 ≥ 1.9 reads as this sampler and schedule."""
    fields = dict(A1111_FIELDS[check_sampler(name)])
    schedule = check_schedule(schedule)  # an A1111 label ("Karras") becomes our name
    if schedule != "automatic":
        fields["Schedule type"] = SCHEDULES[schedule]
    return fields


def split_a1111_sampler(sampler: str, schedule: str | None) -> tuple[str, str | None]:
    """A1111's reading: a schedule suffix on the sampler name ("DPM++ 2M Karras") wins over `Schedule type`."""
    for label in A1111_SCHEDULES:
        if sampler.endswith(" " + label) and sampler[: -len(label) - 1] in A1111_SAMPLERS:
            return sampler[: -len(label) - 1], label
    return sampler, schedule


def sampler_from_a1111(fields: dict[str, str]) -> tuple[str | None, list[str]]:
    """Our sampler for an infotext's `Sampler`/`Schedule type`/`Eta DDIM` (old and new spelling); notices for what differs."""
    raw = fields.get("Sampler", "")
    base, schedule = split_a1111_sampler(raw, fields.get("Schedule type"))
    if base not in A1111_SAMPLERS:
        return None, [f"sampler {raw!r} is not one of ours"]
    uniform, karras = A1111_SAMPLERS[base]
    if schedule == "Automatic":  # A1111 ≥ 1.9: the sampler's own default schedule
        schedule = _DEFAULT_SCHEDULE.get(base)
    notices = []
    if schedule == "Karras" and karras:
        name = karras
    else:
        name = uniform
        if schedule not in (None, "Uniform") and base not in _TIMESTEP_SAMPLERS and schedule_from_a1111(fields) == "automatic":
            notices.append(f"schedule {schedule!r} for {base} is not one of ours; using the model's uniform schedule")
    if name == "ddim" and _float(fields.get("Eta DDIM", "0")) == 1.0:
        name = "ddpm"
    elif name == "ddim" and _float(fields.get("Eta DDIM", "0")) not in (0.0, None):
        notices.append(f"Eta DDIM {fields['Eta DDIM']} is not one of ours; using η = 0")
    return name, notices


def schedule_from_a1111(fields: dict[str, str]) -> str:
    """Our schedule for an infotext's `Schedule type` (or a suffix on `Sampler`), where sampler_from_a1111's sampler
    does not already carry it: Karras on DPM++ 2M is the sampler dpmpp_2m_karras; timestep samplers ignore it (A1111)."""
    base, label = split_a1111_sampler(fields.get("Sampler", ""), fields.get("Schedule type"))
    if base not in A1111_SAMPLERS or base in _TIMESTEP_SAMPLERS or label in (None, "Automatic", "Uniform"):
        return "automatic"
    if label == "Karras" and A1111_SAMPLERS[base][1]:
        return "automatic"
    name = _SCHEDULE_BY_LABEL.get(label)
    if name is None:
        return "automatic"
    try:
        schedule_options(A1111_SAMPLERS[base][0], name)
    except LatentDiffError:
        return "automatic"
    return name


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
