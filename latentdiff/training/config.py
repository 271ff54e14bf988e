"""Training configs: one dict → dataclass builder shared by every recipe, and the from-scratch recipe's dataclasses.

`build(cls, values)` rejects unknown keys and values of the wrong kind or range with one line naming the key; the
from-scratch recipe (`TrainConfig`, `load_config`) and the LoRA recipe (lora_config.py) both go through it. Kept free
of torch so that the CLI's parser builds without importing the training stack.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..data.config import DataConfig
from ..errors import LatentDiffError

# Allowed values per key (the last part of a dotted name): ("min", x) means ≥ x, ("pos",) > 0, ("below1",) in [0, 1), a
# tuple of strings the choices. Kinds are checked against each field's default.
LIMITS: dict[str, tuple] = {
    "max_steps": ("min", 0), "batch_size": ("min", 1), "grad_accum": ("min", 1), "warmup_steps": ("min", 0),
    "decay_steps": ("min", 0), "checkpoint_every": ("min", 1), "sample_every": ("min", 0), "log_every": ("min", 1),
    "lr": ("pos",), "weight_decay": ("min", 0), "max_minutes": ("min", 0), "max_grad_norm": ("pos",),
    "min_snr_gamma": ("min", 0), "noise_offset": ("min", 0), "ema_decay": ("below1",), "caption_dropout": ("below1",),
    "mixed_precision": ("no", "bf16", "fp16"), "keep_checkpoints": ("min", 1), "checkpoint_minutes": ("min", 0),
    "templates": ("emoji", "plain"), "resolution": ("min", 8), "layers_per_block": ("min", 1), "latent_channels": ("min", 1),
    "norm_num_groups": ("min", 1), "kl_weight": ("min", 0), "edge_weight": ("min", 0), "hidden_size": ("min", 1),
    "num_hidden_layers": ("min", 1), "num_attention_heads": ("min", 1), "intermediate_size": ("min", 1), "seed": ("min", 0),
    "posterior": ("sample", "mean"),
}


# Other spellings a value may take, the same words the CLI uses (`--dtype fp32` = mixed_precision "no").
ALIASES: dict[str, dict[str, str]] = {"mixed_precision": {"fp32": "no"}}

# Other spellings a key may take, for good (README: Names): the CLI's word → the recipe's field. `mixed_precision`
# stays the field (accelerate's, kohya's and diffusers' training scripts' word: fp32 master weights, autocast compute);
# `dtype` is what generate and the Python API call the same choice, and train-lora takes `--dtype` too.
KEY_ALIASES: dict[str, str] = {"dtype": "mixed_precision"}


def check_value(name: str, value: Any, default: Any, limits: dict[str, tuple] | None = None, key: str = "") -> Any:
    """`value` of the kind `default` has and within limits[key]; one line naming the key otherwise. Returns it.
    `key` (default: the last part of `name`) is the field whose limits apply when `name` is an alias."""
    limits = LIMITS if limits is None else limits
    key = key or name.rsplit(".", 1)[-1]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise LatentDiffError(f"{name} must be true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(default, float) and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise LatentDiffError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(default, int) and isinstance(value, float)):
            raise LatentDiffError(f"{name} must be {'an integer' if isinstance(default, int) else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise LatentDiffError(f"{name} must be a finite number{' > 0' if limits.get(key) == ('pos',) else ''}, got {value}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise LatentDiffError(f"{name} must be a string, got {value!r}")
    elif isinstance(default, list):
        kind = type(default[0]) if default else str
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise LatentDiffError(f"{name} must be a list of {'strings' if kind is str else 'integers'}, got {value!r}")
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise LatentDiffError(f"{name} must be a mapping, got {value!r}")
    limit = limits.get(key)
    if limit is None:
        return value
    if limit[0] == "min" and value < limit[1]:
        raise LatentDiffError(f"{name} must be ≥ {limit[1]}, got {value}")
    if limit[0] == "pos" and not value > 0:
        raise LatentDiffError(f"{name} must be a finite number > 0, got {value}")
    if limit[0] == "below1" and not 0 <= value < 1:
        raise LatentDiffError(f"{name} must be in [0, 1), got {value}")
    if limit[0] not in ("min", "pos", "below1") and value not in limit:
        if key == "posterior":
            raise LatentDiffError(f"{name} must be {' or '.join(repr(v) for v in limit)}, got {value!r}")
        raise LatentDiffError(f"{name} must be one of {', '.join(limit)}, got {value!r}")
    return value


def convert_value(name: str, value: Any, default: Any) -> Any:
    """Command-line style conversion (a string to the default's type, one string to a list); one line on failure."""
    if isinstance(default, list):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LatentDiffError(f"{name} must be a list of strings")
        return list(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise LatentDiffError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
        raise LatentDiffError(f"{name} must be an integer, got {value!r}")
    try:
        return type(default)(value) if value is not None else default
    except (TypeError, ValueError):
        raise LatentDiffError(f"{name} must be a {type(default).__name__}, got {value!r}") from None


def build(cls: type, values: object, where: str = "", *, unknown: str = "unknown config key {name}",
          convert: bool = False, limits: dict[str, tuple] | None = None):
    """Dataclass `cls` from a dict: unknown keys and bad values are one line naming the (dotted) key.

    Fields whose default is itself a dataclass are built recursively from their sub-mapping. `convert` takes
    command-line style values (strings converted to the field's type) instead of checking kinds strictly.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise LatentDiffError(f"config section {where or 'top level'} must be a mapping")
    known = {f.name for f in fields(cls)}
    defaults = cls()
    kwargs, spelt = {}, {}
    for given, value in values.items():
        name = f"{where}.{given}" if where else given  # errors name the key as the recipe spells it
        key = given if given in known else KEY_ALIASES.get(given, given)
        if key not in known:
            raise LatentDiffError(unknown.format(name=name, key=given))
        if key in spelt:
            raise LatentDiffError(f"{spelt[key]} and {name} are one setting; give one of them")
        spelt[key] = name
        default = getattr(defaults, key)
        value = ALIASES.get(key, {}).get(value, value) if isinstance(value, str) else value
        if is_dataclass(default):
            kwargs[key] = build(type(default), value, name, unknown=unknown, convert=convert, limits=limits)
        elif convert:
            kwargs[key] = convert_value(name, value, default)
        else:
            kwargs[key] = check_value(name, value, default, limits, key)
    return cls(**kwargs)


# -- the from-scratch recipe ----------------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    """A diffusers AutoencoderKL and its loss."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])  # one level per entry; 2^(n-1)× down
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    kl_weight: float = 1e-6                 # LDM KL-f8 used 1e-6
    edge_weight: float = 0.5                # L1 on image x/y differences (penalises blur)


@dataclass
class TextConfig:
    """A CLIP-architecture text encoder (transformers CLIPTextModel) with the shipped CLIP BPE tokenizer."""

    hidden_size: int = 128                  # = the U-Net's cross_attention_dim
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512


@dataclass
class StageConfig:
    """Optimisation settings of one stage."""

    batch_size: int = 32                    # per process
    lr: float = 5e-4
    warmup_steps: int = 100                 # linear warm-up, then constant
    decay_steps: int = 0                    # then linear decay to 0 over the last N steps (warmup-stable-decay,
                                            # https://arxiv.org/abs/2404.06395): a run can be extended and still anneal
    weight_decay: float = 0.01
    max_steps: int = 1000
    max_minutes: float = 0.0                # >0: also stop (with a checkpoint) after this many minutes of this run; write
                                            # the step reached into max_steps to reproduce the run on any machine
    grad_accum: int = 1
    mixed_precision: str = "no"             # "no" (also spelt fp32, as --dtype), "bf16", "fp16" (accelerate)
    ema_decay: float = 0.999
    checkpoint_every: int = 200             # steps between checkpoints (checkpoints/step-N, the newest also `latest`)
    keep_checkpoints: int = 2               # the newest N step-N folders are kept
    checkpoint_minutes: float = 0.0         # >0: also checkpoint at the first log step this many minutes after the last
    sample_every: int = 500                 # steps between sample grids
    log_every: int = 10
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 0.0              # 0 = off (https://arxiv.org/abs/2303.09556)
    posterior: str = "sample"               # unet stage: train on VAE posterior samples (LDM) or on their "mean"
    noise_offset: float = 0.0               # unet stage: 0 = off; ~0.05-0.1 helps learn per-channel means (LossConfig)


@dataclass
class TrainConfig:
    """A whole from-scratch recipe: data, the three parts, and the training stages."""

    output_dir: str = "runs/model"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextConfig = field(default_factory=TextConfig)
    unet: dict = field(default_factory=dict)               # UNetConfig keys; cross_attention_dim follows the text encoder
    train_vae: StageConfig = field(default_factory=StageConfig)
    train_unet: StageConfig = field(default_factory=StageConfig)
    train_decoder: StageConfig = field(default_factory=lambda: StageConfig(max_steps=0))  # 0 = skip the decoder stage
    sample_prompts: list[str] = field(default_factory=lambda: ["a cat in a spacesuit", "grinning face", "red apple", "rocket"])
    generation: dict = field(default_factory=dict)          # the exported folder's generation_config.json (sampling defaults)

    def unet_config(self):
        """The U-Net's config: the `unet` section with the sizes that follow from the VAE and text encoder filled in."""
        from ..models.unet import UNetConfig

        d = dict(self.unet)
        d.setdefault("cross_attention_dim", self.text_encoder.hidden_size)
        d.setdefault("sample_size", self.data.resolution // 2 ** (len(self.vae.block_out_channels) - 1))
        d.setdefault("in_channels", self.vae.latent_channels)
        d.setdefault("out_channels", self.vae.latent_channels)
        cfg = UNetConfig.from_dict(d)
        if cfg.cross_attention_dim != self.text_encoder.hidden_size:
            raise LatentDiffError(f"unet.cross_attention_dim {cfg.cross_attention_dim} != text_encoder.hidden_size {self.text_encoder.hidden_size}")
        return cfg


def load_config(path: str | os.PathLike, *, output_dir: str | None = None) -> TrainConfig:
    """Read a YAML recipe; unknown keys (also in `unet`) and bad values fail with one line naming the key.
    `output_dir` (the CLI's --output-dir) replaces the recipe's."""
    from ..fileio import read_yaml

    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"config file not found: {path}")
    cfg = build(TrainConfig, read_yaml(path, mapping=False), "")
    if output_dir:
        cfg.output_dir = str(output_dir)
    try:
        cfg.unet_config()
    except LatentDiffError as e:
        raise LatentDiffError(re.sub(r"unknown U-Net config key '(.*)'", r"unknown config key unet.\1", str(e))) from None
    except TypeError as e:
        raise LatentDiffError(f"bad unet section: {e}") from None
    if cfg.data.split not in ("train", "all"):
        raise LatentDiffError(f"data.split must be 'train' or 'all', got {cfg.data.split!r}")
    if cfg.data.resolution % 2 ** (len(cfg.vae.block_out_channels) - 1):
        raise LatentDiffError(f"data.resolution {cfg.data.resolution} is not divisible by the VAE's downsampling")
    if not cfg.data.root:
        raise LatentDiffError("config needs data.root (an image folder)")
    from ..checkpoints.loader import check_generation_config

    cfg.generation = check_generation_config(cfg.generation, "generation")  # fail before training, not at export
    given = cfg.data.root
    cfg.data.root = str((path.parent / cfg.data.root) if not Path(cfg.data.root).is_absolute() and not Path(cfg.data.root).exists() else cfg.data.root)
    if not Path(cfg.data.root).is_dir():
        raise LatentDiffError(f"data.root {given} is not a folder (relative paths are read from the current folder, "
                              "then from the config's)")
    return cfg
