"""One accelerate.Accelerator per training stage, whatever the stages before it in this process chose."""

from __future__ import annotations


def new_accelerator(*, mixed_precision: str, cpu: bool, gradient_accumulation_steps: int = 1):
    """accelerate keeps its settings in process-wide singletons and refuses a second Accelerator with another
    mixed precision (`--stage all` runs three stages, a notebook may train a model then a LoRA). Forget the previous
    stage's settings first; the process group (PartialState, set up by `accelerate launch`) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, gradient_accumulation_steps=gradient_accumulation_steps)
