"""The learning rate is a function of the optimizer step, through the real loops: accumulation, resume, LoRA."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from latentdiff.training.checkpoints import CSVLog
from latentdiff.training.schedule import lr_factor

from test_lora_train import config as lora_config
from test_lora_train import data  # noqa: F401  (fixture)
from test_train import make_shapes_dataset, write_config


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["constant", "constant_with_warmup", "linear", "cosine"])
def test_lr_factor_matches_diffusers_schedulers(kind):
    """The LoRA schedules mean what diffusers' get_scheduler means: same rate at every optimizer step."""
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = get_scheduler(kind, opt, num_warmup_steps=3, num_training_steps=10)
    for step in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(step, kind, 3, 10), abs=1e-12), step
        opt.step()
        sched.step()


def test_warmup_stable_decay_values():
    assert [lr_factor(s, "wsd", 4, 12, 4) for s in range(12)] == [0.25, 0.5, 0.75] + [1.0] * 6 + [0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_factor(0, "exp")


class Crash(Exception):
    pass


def test_from_scratch_loop_under_accumulation_and_resume_mid_decay(tmp_path, monkeypatch):
    """grad_accum 2, warm-up 4, 12 steps, decay over the last 4: the logged LR is the schedule's at every step (it used to
    go 0.25→1.0 and never decay); a run that dies after step 10 and resumes from its step-9 checkpoint logs each step
    once, keeps its clock, and ends with the uninterrupted run's weights."""
    from latentdiff.training.stages import load_config, train_vae

    shapes = make_shapes_dataset(tmp_path / "shapes")
    changes = {"train_vae.max_steps": 12, "train_vae.grad_accum": 2, "train_vae.batch_size": 4, "train_vae.warmup_steps": 4,
               "train_vae.decay_steps": 4, "train_vae.log_every": 1, "train_vae.checkpoint_every": 9, "train_vae.lr": 1e-3}
    whole = load_config(write_config(tmp_path / "whole.yaml", shapes, tmp_path / "whole", **changes))
    train_vae(whole, progress=False)
    log = rows(tmp_path / "whole" / "vae" / "log.csv")
    want = [1e-3 * lr_factor(s, "wsd", 4, 12, 4) for s in range(12)]
    assert [int(r["step"]) for r in log] == list(range(1, 13))
    assert [float(r["lr"]) for r in log] == pytest.approx(want, rel=1e-3)

    cut = load_config(write_config(tmp_path / "cut.yaml", shapes, tmp_path / "cut", **changes))
    write = CSVLog.write

    def dying_write(self, **row):
        write(self, **row)
        if row["step"] == 10:
            raise Crash  # the run dies after logging step 10; its last checkpoint is step 9's

    monkeypatch.setattr(CSVLog, "write", dying_write)
    with pytest.raises(Crash):
        train_vae(cut, progress=False)
    monkeypatch.setattr(CSVLog, "write", write)
    assert [int(r["step"]) for r in rows(tmp_path / "cut" / "vae" / "log.csv")] == list(range(1, 11))
    train_vae(cut, resume=True, progress=False)
    log2 = rows(tmp_path / "cut" / "vae" / "log.csv")
    assert [int(r["step"]) for r in log2] == list(range(1, 13))  # step 10 once: the redone row replaced the lost one
    assert [float(r["lr"]) for r in log2] == pytest.approx(want, rel=1e-3)
    seconds = [float(r["seconds"]) for r in log2]
    assert seconds == sorted(seconds)  # the clock goes on from step 9's time
    a = load_file(str(tmp_path / "whole" / "vae" / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "vae" / "checkpoints" / "latest" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_lora_loop_lr_and_resume_log(tiny_folder, data, tmp_path):  # noqa: F811
    """train-lora: linear schedule with warm-up under accumulation is diffusers' rate at each step; a resumed run logs
    each step once and reports only the steps it ran."""
    import shutil

    kw = dict(max_steps=6, checkpoint_every=3, grad_accum=2, batch_size=2, lr=1e-3, lr_scheduler="linear", warmup_steps=2,
              log_every=1, eval_items=0)
    whole = lora_config(tiny_folder, data, tmp_path / "whole", **kw)
    from latentdiff.training.lora import train_lora

    result = train_lora(whole, progress=False)
    assert result.steps == 6
    log = rows(tmp_path / "whole" / "log.csv")
    assert [int(r["step"]) for r in log] == list(range(1, 7))
    assert [float(r["lr"]) for r in log] == pytest.approx([1e-3 * lr_factor(s, "linear", 2, 6) for s in range(6)], abs=1e-9)

    (tmp_path / "whole" / "checkpoints" / "step-000003").rename(tmp_path / "step-000003")
    shutil.rmtree(tmp_path / "whole" / "checkpoints")
    (tmp_path / "whole" / "checkpoints").mkdir()
    (tmp_path / "step-000003").rename(tmp_path / "whole" / "checkpoints" / "step-000003")  # as if it died after step 3
    resumed = train_lora(whole, resume="latest", progress=False)
    assert resumed.steps == 3  # it ran steps 4–6, not 6
    log2 = rows(tmp_path / "whole" / "log.csv")
    assert [int(r["step"]) for r in log2] == list(range(1, 7))
    assert [r["lr"] for r in log2] == [r["lr"] for r in log]
