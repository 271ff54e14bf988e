"""The LoRA training recipe: `LoraTrainConfig` (YAML keys = fields = CLI flags) and its loading and checks.

Kept free of torch so that `latentdiff --help` and the CLI's parser build without importing the training stack.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

from ..defaults import SAMPLING_DEFAULTS
from ..errors import LatentDiffError

ADAPTER = "latentdiff"          # peft adapter name of the LoRA being trained
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class LoraTrainConfig:
    """A LoRA recipe. YAML keys are these field names; each field is also a command-line flag (--max-steps 500)."""

    # what to train on, where to write
    model: str = "default"                      # base model: diffusers folder, single .safetensors file, or "default"
    data: str = ""                              # image folder: kohya .txt captions or metadata.jsonl
    output_dir: str = "runs/lora"
    output_name: str = "lora"                   # stem of the kohya file (<output_name>.safetensors)
    save_formats: list[str] = field(default_factory=lambda: ["peft", "kohya"])  # peft: pytorch_lora_weights.safetensors
    # the adapter (Hu et al. 2021, https://arxiv.org/abs/2106.09685)
    rank: int = 4
    alpha: float = 4.0                          # scale = alpha / rank
    dropout: float = 0.0                        # on the LoRA input
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # + proj, ff (lora.UNET_TARGETS)
    train_text_encoder: bool = False
    text_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    init: str = "kaiming"                       # lora_A init: "kaiming" (peft default) or "gaussian"; lora_B starts at 0
    # data
    resolution: int = 0                         # bucket area side in pixels; 0 = the model's native size
    buckets: bool = True                        # aspect-ratio buckets (kohya-like); off: square crops
    max_aspect: float = 2.0
    random_crop: bool = False                   # needs cache_latents: false (a cached latent has one crop)
    random_flip: bool = False                   # cached as a second latent per image
    caption_dropout: float = 0.0                # empty-caption rate, keeps CFG working (https://arxiv.org/abs/2207.12598)
    instance_token: str = ""                    # prepended to every training caption ("sks, a photo of ...")
    reg_data: str = ""                          # regularisation images (prior preservation, https://arxiv.org/abs/2208.12242)
    prior_loss_weight: float = 1.0
    cache_latents: bool = True
    cache_text: bool = True                     # ignored when train_text_encoder
    cache_dir: str = ""                         # default <output_dir>/cache
    # optimisation
    max_steps: int = 1000
    batch_size: int = 1                         # per process
    grad_accum: int = 1
    lr: float = 1e-4
    text_lr: float = 5e-5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"                    # "adamw" or "adamw8bit" (needs bitsandbytes)
    mixed_precision: str = "auto"               # = --dtype (key `dtype` too): auto (fp16 on CUDA, bf16 on bf16-native
                                                # CPUs, else fp32), fp32 (also spelt no), bf16, fp16
    gradient_checkpointing: bool = False
    prediction_type: str = ""                   # override the model's ("v_prediction" for SD2-768)
    min_snr_gamma: float = 0.0                  # https://arxiv.org/abs/2303.09556 (5 is typical)
    noise_offset: float = 0.0                   # https://www.crosslabs.org/blog/diffusion-with-offset-noise
    seed: int = 0
    device: str = "auto"                        # "cpu" forces the CPU; otherwise accelerate picks
    # checkpoints, logs, validation
    checkpoint_every: int = 500                 # steps; 0 = only the final files
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_items: int = 32                        # fixed-noise loss on this many images at start and end (0 = off)
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0                   # steps; 0 = only at the end (when prompts are given)
    validation_steps: int = 20
    validation_sampler: str = SAMPLING_DEFAULTS["sampler"]
    validation_guidance: float = SAMPLING_DEFAULTS["guidance_scale"]
    validation_seed: int = 0

    def check(self) -> "LoraTrainConfig":
        """Validate values (one line naming the field), returning self."""
        if not self.model:
            raise LatentDiffError("no base model: set model (a diffusers folder, a .safetensors file or default) or pass --model")
        if not self.data:
            raise LatentDiffError("no training data: set data (an image folder) in the config or pass --data")
        choices = {"mixed_precision": MIXED_PRECISION, "optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS,
                   "init": ("kaiming", "gaussian"), "prediction_type": ("", "epsilon", "v_prediction")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LatentDiffError(f"{name} must be one of {', '.join(a or repr(a) for a in allowed)}, got {getattr(self, name)!r}")
        for fmt in self.save_formats:
            if fmt not in ("peft", "kohya"):
                raise LatentDiffError(f"save_formats holds {fmt!r}; choose peft and/or kohya")
        for name in ("rank", "max_steps", "batch_size", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise LatentDiffError(f"{name} must be at least 1, got {getattr(self, name)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LatentDiffError(f"{f.name} must be a finite number{' > 0' if f.name in ('lr', 'text_lr') else ''}, got {value}")
        for name in ("lr", "text_lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise LatentDiffError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("alpha", "weight_decay", "warmup_steps", "min_snr_gamma", "noise_offset", "checkpoint_every",
                     "keep_checkpoints", "eval_items", "validation_every", "seed", "validation_seed", "resolution"):
            if getattr(self, name) < 0:
                raise LatentDiffError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("log_every", "validation_steps", "max_aspect"):
            if not getattr(self, name) >= 1:
                raise LatentDiffError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("caption_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LatentDiffError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.random_crop and self.cache_latents:
            raise LatentDiffError("random_crop needs cache_latents: false (a cached latent holds one crop)")
        if self.resolution and self.resolution % 64:
            raise LatentDiffError(f"resolution must be a multiple of 64, got {self.resolution}")
        return self


def config_from(values: dict) -> LoraTrainConfig:
    """Build a config from a dict (YAML + flags), one line for an unknown key or a value of the wrong kind."""
    from .config import build

    return build(LoraTrainConfig, values, unknown="unknown train-lora setting {key!r}", convert=True).check()


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> LoraTrainConfig:
    """YAML recipe (optional) with command-line overrides on top."""
    from ..fileio import read_yaml
    from .config import KEY_ALIASES

    values = read_yaml(path) if path else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for alias, key in KEY_ALIASES.items():  # a flag wins over the recipe however the recipe spells the key (dtype:)
        if key in flags:
            values.pop(alias, None)
    values.update(flags)
    return config_from(values)
