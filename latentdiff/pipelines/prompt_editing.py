"""Conditioning that changes by step: A1111's prompt editing and alternation (models.prompt_schedule) on a pipeline."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import LatentDiffError
from ..models.prompt_schedule import prompt_schedule, text_at_step


def step_contexts(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int, steps: int,
                  first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The embeddings of each sampling step (one tensor when no prompt changes); each distinct text set encoded once.

    `first`: the embeddings of the texts as written (pipe.condition's), returned alone when no prompt changes by step.
    """
    texts = negatives + prompts if guided else prompts
    schedules = [prompt_schedule(t, steps) for t in texts]
    if all(len(s) == 1 and s[0][1] == t for s, t in zip(schedules, texts)):
        return [pipe.encode_text(prompts, negatives, guided, clip_skip) if first is None else first]
    if getattr(pipe.components, "is_sdxl", False):
        raise LatentDiffError("prompt editing [from:to:when] and alternation [a|b] are SD1/SD2's for now, not SDXL's")
    cache: dict[tuple[str, ...], torch.Tensor] = {}
    out = []
    for step in range(steps):
        at = tuple(text_at_step(s, step) for s in schedules)
        if at not in cache:
            n = len(negatives) if guided else 0
            cache[at] = pipe.encode_text(list(at[n:]), list(at[:n]) or negatives, guided, clip_skip)
        out.append(cache[at])
    return out


def switcher(model, contexts: list[torch.Tensor], timesteps: int) -> Callable | None:
    """An `on_step` for pipe.denoise that gives `model` the next step's embeddings (None when they never change).

    Timestep i of a scheduler with several model calls per step (Heun) belongs to sampling step i·steps // timesteps.
    """
    if len(contexts) == 1:
        return None
    steps = len(contexts)

    def on_step(i: int, t, latents: torch.Tensor) -> torch.Tensor:
        model.context = contexts[min((i + 1) * steps // timesteps, steps - 1)]
        return latents
    return on_step
