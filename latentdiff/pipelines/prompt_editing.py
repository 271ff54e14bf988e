"""Conditioning that changes by step: A1111's prompt editing and alternation (models.prompt_schedule) on a pipeline."""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import LatentDiffError
from ..models.prompt_schedule import prompt_schedule, text_at_step
from .sdxl import encode_texts


class StepContexts(list):
    """The embeddings of each step, and for SDXL the pooled text (n, P) of each step, which follows the context."""

    pooled: list[torch.Tensor] | None = None


def step_contexts(pipe, prompts: list[str], negatives: list[str], guided: bool, clip_skip: int, steps: int,
                  first: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The embeddings of each sampling step (one tensor when no prompt changes); each distinct text set encoded once.

    `first`: the embeddings of the texts as written (pipe.condition's), returned alone when no prompt changes by step.
    SDXL's step texts are encoded as pipe.condition encodes them, and their pooled texts ride along (`.pooled`).
    """
    texts = negatives + prompts if guided else prompts
    schedules = [prompt_schedule(t, steps) for t in texts]
    sdxl = getattr(pipe.components, "is_sdxl", False)

    def encode(p: list[str], n: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if sdxl:
            return encode_texts(pipe, p, n, guided, clip_skip)  # (n, T, D), (n, P)
        return pipe.encode_text(p, n, guided, clip_skip), None

    if all(len(s) == 1 and s[0][1] == t for s, t in zip(schedules, texts)):
        return [encode(prompts, negatives)[0] if first is None else first]
    cache: dict[tuple[str, ...], tuple] = {}
    out = StepContexts()
    out.pooled = [] if sdxl else None
    for step in range(steps):
        at = tuple(text_at_step(s, step) for s in schedules)
        if at not in cache:
            n = len(negatives) if guided else 0
            cache[at] = encode(list(at[n:]), list(at[:n]) or negatives)
        out.append(cache[at][0])
        if sdxl:
            out.pooled.append(cache[at][1])
    return out


def added_cond(model):
    """The SDXL U-Net wrapper (pipelines.sdxl.AddedCondUNet) inside a guided model's wrappers, or None."""
    m = getattr(model, "unet", None)
    while m is not None and not hasattr(m, "time_ids"):
        m = getattr(m, "unet", None)
    return m


def switcher(model, contexts: list[torch.Tensor], timesteps: int) -> Callable | None:
    """An `on_step` for pipe.denoise that gives `model` the next step's embeddings (None when they never change).

    Timestep i of a scheduler with several model calls per step (Heun) belongs to sampling step i·steps // timesteps.
    SDXL's pooled text (`contexts.pooled`) goes to the U-Net's added conditioning with each context, from step 0 on.
    """
    if len(contexts) == 1:
        return None
    steps = len(contexts)
    pooled = getattr(contexts, "pooled", None)
    added = added_cond(model) if pooled else None
    if pooled and added is None:
        raise LatentDiffError("SDXL prompt editing needs the U-Net with its added conditioning (pipelines.sdxl.condition)")

    def use(j: int) -> None:
        model.context = contexts[j]
        if added is not None:
            added.text_embeds = pooled[j]  # (n, P), read by the U-Net and any ControlNet

    use(0)

    def on_step(i: int, t, latents: torch.Tensor) -> torch.Tensor:
        use(min((i + 1) * steps // timesteps, steps - 1))
        return latents
    return on_step
