"""Sampler × schedule: every pair diffusers has gives diffusers' own timesteps and sigmas; the PNG says it as A1111
does (`Schedule type`) and replays it; pairs diffusers lacks are refused in one line."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.cli import main
from latentdiff.errors import LatentDiffError
from latentdiff.pipelines.png_metadata import GenerationParams, read_png_params
from latentdiff.pipelines.replay import from_a1111
from latentdiff.pipelines.samplers import SAMPLERS, make_scheduler

SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon"}
# diffusers' documented option for each schedule (its schedulers overview: "Noise schedules and schedule types")
DOCUMENTED = {"automatic": {}, "uniform": {"use_karras_sigmas": False}, "karras": {"use_karras_sigmas": True},
              "exponential": {"use_exponential_sigmas": True}, "beta": {"use_beta_sigmas": True},
              "sgm_uniform": {"timestep_spacing": "trailing"}, "simple": {"timestep_spacing": "trailing"},
              "trailing": {"timestep_spacing": "trailing"}, "leading": {"timestep_spacing": "leading"},
              "linspace": {"timestep_spacing": "linspace"}}
# the sampler's own options from diffusers' table (DPM++ 2M is dpmsolver++ order 2; PLMS skips the PRK steps)
OWN = {"pndm": {"skip_prk_steps": True}, "dpmpp_2m": {"algorithm_type": "dpmsolver++", "solver_order": 2},
       "dpmpp_2m_karras": {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}}


def pairs():
    for sampler, (cls, _, _) in SAMPLERS.items():
        accepted = inspect.signature(cls.__init__).parameters
        for schedule, options in DOCUMENTED.items():
            yield sampler, schedule, all(k in accepted or v is False for k, v in options.items())


ALL = list(pairs())


@pytest.mark.parametrize("sampler,schedule,available", ALL, ids=[f"{a}-{b}" for a, b, _ in ALL])
def test_timesteps_and_sigmas_equal_diffusers(sampler, schedule, available):
    cls = SAMPLERS[sampler][0]
    if not available:
        with pytest.raises(LatentDiffError, match=f"schedule '{schedule}' is not available for sampler '{sampler}'"):
            make_scheduler(sampler, SD_CONFIG, schedule)
        return
    accepted = inspect.signature(cls.__init__).parameters
    documented = {k: v for k, v in DOCUMENTED[schedule].items() if k in accepted}
    own = OWN.get(sampler, {})
    if schedule not in ("automatic", "trailing", "leading", "linspace"):  # a sigma schedule replaces dpmpp_2m_karras' Karras
        own = {k: v for k, v in own.items() if k != "use_karras_sigmas"}
    want = cls.from_config({**SD_CONFIG, **own, **documented})
    got = make_scheduler(sampler, SD_CONFIG, schedule)
    for s in (want, got):
        s.set_timesteps(9)
    assert torch.equal(got.timesteps, want.timesteps)
    if hasattr(want, "sigmas"):
        assert torch.equal(torch.as_tensor(got.sigmas), torch.as_tensor(want.sigmas))


def test_pair_count_and_schedules_change_sigmas():
    assert sum(a for _, _, a in ALL) >= 50  # every pair diffusers has
    k, u = make_scheduler("euler", SD_CONFIG, "karras"), make_scheduler("euler", SD_CONFIG, "uniform")
    for s in (k, u):
        s.set_timesteps(9)
    assert not torch.allclose(k.sigmas, u.sigmas)
    t = make_scheduler("euler", SD_CONFIG, "sgm_uniform")
    t.set_timesteps(4)
    assert t.timesteps.tolist() == [999, 749, 499, 249]  # trailing spacing (Lin et al. 2023, Table 2)


def test_png_field_written_and_read_as_a1111():
    text = GenerationParams(prompt="x", sampler="euler", schedule="exponential").to_a1111()
    assert "Sampler: Euler, Schedule type: Exponential," in text
    src = from_a1111(text)
    assert (src.params.sampler, src.params.schedule, src.notices) == ("euler", "exponential", [])
    src = from_a1111(text.replace("Schedule type: Exponential", "Schedule type: SGM Uniform"))
    assert (src.params.sampler, src.params.schedule) == ("euler", "sgm_uniform")
    old = from_a1111("x\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64, RNG: CPU")
    assert (old.params.sampler, old.params.schedule, old.notices) == ("dpmpp_2m_karras", "automatic", [])
    ddim = from_a1111("x\nSteps: 3, Sampler: DDIM, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, RNG: CPU")
    assert (ddim.params.sampler, ddim.params.schedule) == ("ddim", "automatic")  # A1111 ignores it for DDIM


def test_cli_schedule_draws_replays_and_refuses(capsys, tmp_path, tiny_folder):
    args = ["--model", str(tiny_folder), "--steps", "3", "--seed", "2", "--dtype", "fp32", "--sampler", "euler"]
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(["generate", "a cat", *args, "--schedule", "karras", "--out", str(a)]) == 0
    assert main(["generate", "a cat", *args, "--out", str(b)]) == 0
    assert read_png_params(a).schedule == "karras" and "Schedule type: Karras" in Image.open(a).info["parameters"]
    assert main(["generate", "--replay", str(a), "--out", str(c)]) == 0
    px = [np.asarray(Image.open(p)).astype(int) for p in (a, b, c)]
    assert np.array_equal(px[0], px[2]) and not np.array_equal(px[0], px[1])
    capsys.readouterr()
    assert main(["generate", "a cat", "--sampler", "ddim", "--schedule", "karras", "--model", str(tiny_folder)]) == 2
    assert capsys.readouterr().err.strip().endswith("schedule 'karras' is not available for sampler 'ddim' (diffusers' DDIMScheduler has no use_karras_sigmas)")
    assert main(["generate", "a cat", "--schedule", "wavy"]) == 2
    assert "unknown schedule 'wavy'" in capsys.readouterr().err
