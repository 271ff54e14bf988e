"""Training from scratch: a small AutoencoderKL, then our U-Net jointly with a CLIP text encoder, then export.

Stages (`latentdiff train CONFIG.yaml --stage vae|unet|decoder|export|all`), each resumable (`--resume`):

* ``vae``: AutoencoderKL on pixels; L1 + image-gradient L1 (a cheap sharpness term, no pretrained
  perceptual network exists offline) + a small KL (LDM's KL-f8 recipe, https://arxiv.org/abs/2112.10752).
* ``unet``: the U-Net and the text encoder trained together on the frozen VAE's latents (LDM-style joint
  conditioning), ε-prediction on a DDPM scaled_linear schedule, EMA weights, 10% caption dropout for CFG.
* ``decoder`` (optional, `train_decoder.max_steps` > 0): more decoder training on the cached posteriors with the
  encoder frozen, so the latents the U-Net learned stay valid (independent of stage 2: may run beside it).
* ``export``: the EMA weights as a diffusers folder in fp16 safetensors, loadable by `load_components`.

The images are decoded once into an in-memory uint8 cache (small resolutions only), so a step costs the
model's compute alone. Batches are drawn from a generator seeded by (seed, step), so a resumed run sees
the same data as an uninterrupted one. Runs under `accelerate launch` (each process takes its slice).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LatentDiffError
from ..fileio import atomic_write, save_safetensors
from ..models.unet import UNet, UNetConfig
from ..runtime import default_device
from .checkpointing import CSVLog, check_same_architecture, load_training_state, save_training_state, write_json
from .data import EMOJI_TEMPLATES, CaptionSampler, ImageCaptionDataset, Record
from .diffusion import DiffusionLoss, LossConfig
from .ema import EMA
from .accelerator import new_accelerator
from .schedule import lr_factor, set_lr

log = logging.getLogger(__name__)

SCHEDULER = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "clip_sample": False, "prediction_type": "epsilon", "timestep_spacing": "leading"}


# -- configuration ------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the images come from and how they are shaped."""

    root: str = ""                          # image folder (metadata.jsonl or kohya .txt pairs)
    resolution: int = 64                    # square side in pixels
    split: str = "train"                    # "train" (held-out emoji excluded) or "all"
    templates: str = "emoji"                # "emoji" (EMOJI_TEMPLATES) or "plain" (caption as is)
    caption_dropout: float = 0.1            # empty caption rate for CFG, https://arxiv.org/abs/2207.12598


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
    mixed_precision: str = "no"             # "no", "bf16", "fp16" (accelerate)
    ema_decay: float = 0.999
    checkpoint_every: int = 200             # steps between checkpoints
    checkpoint_minutes: float = 0.0         # >0: also checkpoint at the first log step this many minutes after the last
    sample_every: int = 500                 # steps between sample grids
    log_every: int = 10
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 0.0              # 0 = off (https://arxiv.org/abs/2303.09556)
    posterior: str = "sample"               # unet stage: train on VAE posterior samples (LDM) or on their "mean"
    noise_offset: float = 0.0               # unet stage: 0 = off; ~0.05-0.1 helps learn per-channel means (LossConfig)


@dataclass
class TrainConfig:
    """A whole from-scratch recipe: data, the three parts, and the two training stages."""

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

    def unet_config(self) -> UNetConfig:
        d = dict(self.unet)
        d.setdefault("cross_attention_dim", self.text_encoder.hidden_size)
        d.setdefault("sample_size", self.data.resolution // 2 ** (len(self.vae.block_out_channels) - 1))
        d.setdefault("in_channels", self.vae.latent_channels)
        d.setdefault("out_channels", self.vae.latent_channels)
        cfg = UNetConfig.from_dict(d)
        if cfg.cross_attention_dim != self.text_encoder.hidden_size:
            raise LatentDiffError(f"unet.cross_attention_dim {cfg.cross_attention_dim} != text_encoder.hidden_size {self.text_encoder.hidden_size}")
        return cfg


# Allowed values per config field (checked by _build): ("min", x) means ≥ x, ("pos",) > 0, ("below1",) in [0, 1), a tuple of
# strings the choices. Types are checked against each field's default.
LIMITS: dict[str, tuple] = {
    "max_steps": ("min", 0), "batch_size": ("min", 1), "grad_accum": ("min", 1), "warmup_steps": ("min", 0),
    "decay_steps": ("min", 0), "checkpoint_every": ("min", 1), "sample_every": ("min", 0), "log_every": ("min", 1),
    "lr": ("pos",), "weight_decay": ("min", 0), "max_minutes": ("min", 0), "max_grad_norm": ("pos",),
    "min_snr_gamma": ("min", 0), "noise_offset": ("min", 0), "ema_decay": ("below1",), "caption_dropout": ("below1",),
    "mixed_precision": ("no", "bf16", "fp16"),  # posterior and split: checked in load_config
    "templates": ("emoji", "plain"), "resolution": ("min", 8), "layers_per_block": ("min", 1), "latent_channels": ("min", 1),
    "norm_num_groups": ("min", 1), "kl_weight": ("min", 0), "edge_weight": ("min", 0), "hidden_size": ("min", 1),
    "num_hidden_layers": ("min", 1), "num_attention_heads": ("min", 1), "intermediate_size": ("min", 1), "seed": ("min", 0),
}


def _check_value(name: str, value, default):
    """`value` of the kind `default` has and within LIMITS[name]; one line naming the key otherwise. Returns it."""
    key = name.rsplit(".", 1)[-1]
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
            raise LatentDiffError(f"{name} must be a finite number{' > 0' if LIMITS.get(key) == ('pos',) else ''}, got {value}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise LatentDiffError(f"{name} must be a string, got {value!r}")
    elif isinstance(default, list):
        kind = type(default[0]) if default else str
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise LatentDiffError(f"{name} must be a list of {'strings' if kind is str else 'integers'}, got {value!r}")
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise LatentDiffError(f"{name} must be a mapping, got {value!r}")
    limit = LIMITS.get(key)
    if limit is None:
        return value
    if limit[0] == "min" and value < limit[1]:
        raise LatentDiffError(f"{name} must be ≥ {limit[1]}, got {value}")
    if limit[0] == "pos" and not value > 0:
        raise LatentDiffError(f"{name} must be a finite number > 0, got {value}")
    if limit[0] == "below1" and not 0 <= value < 1:
        raise LatentDiffError(f"{name} must be in [0, 1), got {value}")
    if isinstance(limit[0], str) and limit[0] not in ("min", "pos", "below1") and value not in limit:
        raise LatentDiffError(f"{name} must be one of {', '.join(limit)}, got {value!r}")
    return value


def _build(cls, d: object, where: str):
    """Dataclass from a dict, rejecting unknown keys and values of the wrong kind or range with one line naming the key."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise LatentDiffError(f"config section {where or 'top level'} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise LatentDiffError(f"unknown config key {where + '.' if where else ''}{key}")
        sub = {"data": DataConfig, "vae": VAEConfig, "text_encoder": TextConfig, "train_vae": StageConfig,
               "train_unet": StageConfig, "train_decoder": StageConfig}.get(key) if cls is TrainConfig else None
        kwargs[key] = _build(sub, value, key) if sub else _check_value(f"{where + '.' if where else ''}{key}", value,
                                                                         getattr(defaults, key))
    return cls(**kwargs)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML recipe; unknown keys (also in `unet`) fail with one line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LatentDiffError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LatentDiffError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    cfg = _build(TrainConfig, raw, "")
    try:
        cfg.unet_config()
    except LatentDiffError as e:
        raise LatentDiffError(re.sub(r"unknown U-Net config key '(.*)'", r"unknown config key unet.\1", str(e))) from None
    except TypeError as e:
        raise LatentDiffError(f"bad unet section: {e}") from None
    if cfg.train_unet.posterior not in ("sample", "mean"):
        raise LatentDiffError(f"train_unet.posterior must be 'sample' or 'mean', got {cfg.train_unet.posterior!r}")
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


# -- parts ---------------------------------------------------------------------------------------------------------
def build_vae(c: VAEConfig, resolution: int):
    from diffusers import AutoencoderKL

    n = len(c.block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=c.latent_channels,
                         block_out_channels=tuple(c.block_out_channels), down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=c.layers_per_block,
                         norm_num_groups=c.norm_num_groups, sample_size=resolution)


def build_text_encoder(c: TextConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                                       num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                                       max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
                                       eos_token_id=49407, pad_token_id=49407))


class Denoiser(nn.Module):
    """Text encoder + U-Net as one module, so one optimizer and one DDP wrapper train them jointly."""

    def __init__(self, unet: UNet, text_encoder: nn.Module):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, latents: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor,
                x_self_cond: torch.Tensor | None = None) -> torch.Tensor:
        context = self.text_encoder(input_ids)[0]  # (B, 77, D)
        return self.unet(latents, t, context, x_self_cond=x_self_cond)


class VAETrainee(nn.Module):
    """AutoencoderKL with a training forward (so DDP sees one call): x → (reconstruction, KL per pixel-channel)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        y = self.vae.decode(post.sample()).sample  # (b, 3, R, R)
        return y, post.kl() / x[0].numel()  # (b,)


# -- data ----------------------------------------------------------------------------------------------------------
class PixelCache:
    """All training images decoded once at one resolution: uint8 (N, 3, R, R) plus their records."""

    def __init__(self, images: torch.Tensor, records: list[Record], report=None):
        self.images, self.records = images, records
        self.report = report  # the scan's ScanReport when built now (skipped images counted), None when loaded

    @classmethod
    def load_or_build(cls, data: DataConfig, cache_path: Path, progress: bool = True) -> "PixelCache":
        if cache_path.is_file():
            blob = torch.load(cache_path, weights_only=False)
            if blob.get("key") == _cache_key(data):
                return cls(blob["images"], [Record(**r) for r in blob["records"]])
        split = "train" if data.split == "train" else None
        ds = ImageCaptionDataset(data.root, resolution=data.resolution, split=split, progress=progress)
        images = torch.empty((len(ds), 3, data.resolution, data.resolution), dtype=torch.uint8)
        for i in tqdm(range(len(ds)), desc="decode images", unit="img", disable=None if progress else True):
            images[i] = ((ds[i]["pixel_values"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        records = [{**asdict(r), "path": str(r.path)} for r in ds.records]
        atomic_write(cache_path, lambda tmp: torch.save({"key": _cache_key(data), "images": images, "records": records}, tmp))
        return cls(images, [Record(**r) for r in records], ds.report)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, seed: int, step: int, global_batch: int, rank: int, world: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[int]]:
        """This process's slice of step's batch: pixels in [-1, 1] (b, 3, R, R) on device, and their indices."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(self.images), (global_batch,), generator=g)[rank::world].tolist()
        return self.images[idx].to(device).float() / 127.5 - 1.0, idx  # uint8 crosses to the device: 4× fewer bytes


def _cache_key(data: DataConfig) -> str:
    return f"{Path(data.root).resolve()}|{data.resolution}|{data.split}|v1"


def captions_for(records: list[Record], idx: list[int], sampler: CaptionSampler, seed: int, step: int) -> list[str]:
    return [sampler(records[i], random.Random(f"{seed}:{step}:{j}:{i}")) for j, i in enumerate(idx)]


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) ids padded as the pipeline pads at inference."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


class TokenCache:
    """tokenize() with a memory: the caption space (labels × templates + tags) is finite, so each caption is tokenized once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self.ids})
        if new:
            self.ids.update(zip(new, tokenize(self.tokenizer, new)))
        return torch.stack([self.ids[c] for c in captions])  # (B, 77)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def _ckpt_dir(cfg: TrainConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage / "checkpoint"


def save_checkpoint(folder: Path, arch: dict, model: nn.Module, ema: EMA, optimizer, step: int) -> None:
    """Weights, EMA, optimizer and RNG state, each written atomically; state.pt (with the step) last."""
    write_json(folder / "arch.json", arch)
    save_safetensors(model.state_dict(), folder / "model.safetensors")
    save_safetensors(ema.state_dict(), folder / "ema.safetensors")
    save_training_state(folder / "state.pt", {"step": step, "optimizer": optimizer.state_dict(),
                                              "torch_rng": torch.get_rng_state()})


def load_checkpoint(folder: Path, arch: dict, model: nn.Module, ema: EMA, optimizer) -> int:
    """Restore a checkpoint written by save_checkpoint; refuse another architecture with one line."""
    from safetensors.torch import load_file

    if not (folder / "arch.json").is_file():
        raise LatentDiffError(f"no checkpoint to resume in {folder}")
    check_same_architecture(json.loads((folder / "arch.json").read_text()), json.loads(json.dumps(arch)), folder.parent.name)
    state = load_training_state(folder / "state.pt")
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    ema.load_state_dict(load_file(str(folder / "ema.safetensors")), state["step"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


# -- the loop ----------------------------------------------------------------------------------------------------------
class _Loop:
    """The shared accelerate loop: steps, accumulation, clipping, EMA, logs, checkpoints, samples."""

    def __init__(self, cfg: TrainConfig, stage: str, sc: StageConfig, model: nn.Module, arch: dict, resume: bool,
                 progress: bool):
        self.cfg, self.stage, self.sc, self.arch, self.progress = cfg, stage, sc, arch, progress
        self.acc = new_accelerator(mixed_precision=sc.mixed_precision, gradient_accumulation_steps=sc.grad_accum,
                                   cpu=not torch.cuda.is_available())
        torch.manual_seed(cfg.seed + self.acc.process_index)
        self.dir = Path(cfg.output_dir) / stage
        self.ema = EMA(model, decay=sc.ema_decay)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sc.lr, weight_decay=sc.weight_decay,
                                betas=(0.9, 0.99))
        self.step = 0
        if resume:
            self.step = load_checkpoint(self.dir / "checkpoint", arch, model, self.ema, opt)
        elif (self.dir / "checkpoint" / "state.pt").is_file():
            raise LatentDiffError(f"{self.dir / 'checkpoint'} already holds a checkpoint; pass --resume or use another output_dir")
        self.base_lrs = [g["lr"] for g in opt.param_groups]  # the LR is lr_factor(step) × these, set before each step
        self.lr = sc.lr
        self.raw = model
        self.model, self.opt = self.acc.prepare(model, opt)
        self.ema.to(self.acc.device)
        if self.acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts (norms, EMA) on tensor cores
        self.log = CSVLog(self.dir / "loss.csv", ["step", "loss", "lr", "seconds", "samples_per_s"],
                          resume_step=self.step if resume else None) if self.acc.is_main_process else None
        self.tb = None
        if self.acc.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.dir / "tb"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def run(self, loss_fn, on_sample, on_checkpoint=None) -> list[float]:
        """Train to max_steps; loss_fn(step, micro) → scalar loss. Returns the logged losses."""
        sc, acc = self.sc, self.acc
        losses, window, t0 = [], [], time.time()
        last_t = last_ckpt = t0
        deadline = t0 + sc.max_minutes * 60 if sc.max_minutes > 0 else math.inf
        bar = tqdm(total=sc.max_steps, initial=self.step, desc=f"train {self.stage}", unit="step",
                   disable=not (self.progress and acc.is_main_process))
        self.model.train()
        stop = sc.max_steps
        while self.step < stop:
            self.lr = set_lr(self.opt, self.base_lrs, lr_factor(self.step, "wsd", sc.warmup_steps, sc.max_steps, sc.decay_steps))
            for micro in range(sc.grad_accum):
                with acc.accumulate(self.model):  # the optimizer steps (and grads sync) at the last micro-batch only
                    loss = loss_fn(self.step, micro)
                    acc.backward(loss)
                    if acc.sync_gradients and sc.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), sc.max_grad_norm)
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                window.append(loss.detach().float())  # read at log time: no device sync per step
            self.ema.update(acc.unwrap_model(self.model))
            self.step += 1
            bar.update(1)
            timed = False  # a checkpoint by the clock: a lease that dies midway still leaves one ≤ checkpoint_minutes old
            if (deadline < math.inf or sc.checkpoint_minutes > 0) and self.step % sc.log_every == 0 and stop == sc.max_steps:
                now = time.time()
                flags = torch.tensor([[now > deadline, now - last_ckpt > sc.checkpoint_minutes * 60 > 0]], device=acc.device)
                late, timed = (acc.gather(flags.float()).amax(0) > 0).tolist()  # all processes agree on both
                if late:
                    stop = self.step  # out of time: this step is the last (checkpoint and samples below)
                    log.warning("%s: max_minutes=%g reached at step %d", self.stage, sc.max_minutes, self.step)
            if self.step % sc.log_every == 0 or self.step == stop:
                mean = acc.gather(torch.stack(window).mean().reshape(1)).mean().item()
                now = time.time()
                rate = len(window) / sc.grad_accum * sc.batch_size * acc.num_processes * sc.grad_accum / max(now - last_t, 1e-9)
                losses.append(mean)
                window, last_t = [], now
                bar.set_postfix(loss=f"{mean:.4f}")
                if self.log:
                    self.log.write(step=self.step, loss=f"{mean:.6f}", lr=f"{self.lr:.3g}",
                                   seconds=f"{now - t0 + self.log.seconds_offset:.1f}", samples_per_s=f"{rate:.2f}")
                if self.tb:
                    self.tb.add_scalar(f"{self.stage}/loss", mean, self.step)
            if self.step % sc.checkpoint_every == 0 or self.step == stop or timed:
                last_ckpt = time.time()
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(self.dir / "checkpoint", self.arch, acc.unwrap_model(self.model), self.ema, self.opt, self.step)
                    if on_checkpoint:
                        on_checkpoint(self.step)
            if acc.is_main_process and sc.sample_every and (self.step % sc.sample_every == 0 or self.step == stop):
                on_sample(self.step)
        bar.close()
        acc.wait_for_everyone()
        if self.tb:
            self.tb.close()
        return losses


def _save_grid(images: torch.Tensor, path: Path, cols: int) -> None:
    """Images in [0, 1] (N, 3, H, W) → one PNG grid, atomically."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * h, cols * w)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    arr = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def _vae_arch(cfg: TrainConfig) -> dict:
    return {"resolution": cfg.data.resolution, **asdict(cfg.vae)} | {"kl_weight": None, "edge_weight": None}


def train_vae(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> list[float]:
    """Stage 1: the autoencoder on pixels. Returns the logged losses."""
    sc, vc = cfg.train_vae, cfg.vae
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt", progress)
    torch.manual_seed(cfg.seed)
    vae = VAETrainee(build_vae(vc, cfg.data.resolution))
    loop = _Loop(cfg, "vae", sc, vae, _vae_arch(cfg), resume, progress)
    fixed, _ = cache.batch(cfg.seed, -1, 16, 0, 1)

    def loss_fn(step: int, micro: int) -> torch.Tensor:
        x, _ = cache.batch(cfg.seed, step * sc.grad_accum + micro, sc.batch_size * loop.acc.num_processes,
                           loop.acc.process_index, loop.acc.num_processes, loop.acc.device)  # (b, 3, R, R)
        with loop.acc.autocast():
            y, kl = loop.model(x)
        y = y.float()
        rec = (y - x).abs().mean()
        edge = ((y.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (y.diff(dim=-2) - x.diff(dim=-2)).abs().mean()) / 2
        return rec + vc.edge_weight * edge + vc.kl_weight * kl.float().mean()  # LDM weighs summed KL vs summed L1; both per pixel here

    def on_sample(step: int) -> None:
        vae_ = VAETrainee(build_vae(vc, cfg.data.resolution)).eval()
        loop.ema.copy_to(vae_)
        vae_ = vae_.vae
        with torch.no_grad():
            rec = vae_.decode(vae_.encode(fixed).latent_dist.mode()).sample
        _save_grid(torch.cat([fixed, rec]).add(1).div(2), loop.dir / "samples" / f"recon-{step:06d}.png", cols=16)

    return loop.run(loss_fn, on_sample)


def load_trained_vae(cfg: TrainConfig, *, decoder: bool = True):
    """The VAE stage's EMA weights (with the decoder stage's decoder when it ran and `decoder`), frozen."""
    from safetensors.torch import load_file

    folder = _ckpt_dir(cfg, "vae")
    if not (folder / "ema.safetensors").is_file():
        raise LatentDiffError(f"no trained VAE in {folder}; run the vae stage first")
    check_same_architecture(json.loads((folder / "arch.json").read_text()), json.loads(json.dumps(_vae_arch(cfg))), "VAE")
    vae = VAETrainee(build_vae(cfg.vae, cfg.data.resolution))
    vae.load_state_dict(load_file(str(folder / "ema.safetensors")))
    tuned = _ckpt_dir(cfg, "decoder") / "ema.safetensors"
    if decoder and cfg.train_decoder.max_steps > 0 and tuned.is_file():
        state = load_file(str(tuned))  # the encoder in it is the vae stage's, unchanged; take the decoder side only
        vae.load_state_dict({k: v for k, v in state.items() if ".decoder." in k or ".post_quant_conv." in k}, strict=False)
    return vae.vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(cfg: TrainConfig, cache: PixelCache, vae, progress: bool = True,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """Posterior mean and std of every image (N, 2C, h, w) on the CPU, cached to disk, and the scaling factor 1/std(z)."""
    path = Path(cfg.output_dir) / "unet" / "latents.pt"
    stamp = (Path(cfg.output_dir) / "vae" / "checkpoint" / "state.pt").stat().st_mtime_ns
    if path.is_file():
        blob = torch.load(path, weights_only=False)
        if blob["stamp"] == stamp and len(blob["moments"]) == len(cache):
            return blob["moments"], blob["scale"]
    out = []
    vae.to(device)
    for i in tqdm(range(0, len(cache), 64), desc="encode latents", disable=None if progress else True):
        x = cache.images[i:i + 64].to(device).float() / 127.5 - 1.0
        d = vae.encode(x).latent_dist
        out.append(torch.cat([d.mean, d.std], dim=1).cpu())  # (b, 2C, h, w)
    moments = torch.cat(out)
    c = moments.shape[1] // 2
    scale = 1.0 / moments[:, :c].std().item()  # the mean's spread; the posterior noise is small next to it
    atomic_write(path, lambda tmp: torch.save({"stamp": stamp, "moments": moments, "scale": scale}, tmp))
    return moments, scale


class DecoderTrainee(nn.Module):
    """The VAE with its encoder frozen: (unscaled) latents → pixels, so the latent space the U-Net learns stays fixed."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample  # (b, 3, R, R)


def train_decoder(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> list[float]:
    """Stage 3 (optional, can run beside stage 2): more decoder training on the cached posteriors, encoder fixed.

    Fine-tuning only the decoder is how SD's ft-MSE VAE was improved; the U-Net's latents stay valid.
    """
    sc, vc = cfg.train_decoder, cfg.vae
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt", progress)
    vae = load_trained_vae(cfg, decoder=False)
    moments, _ = encode_latents(cfg, cache, vae, progress, default_device())
    c = moments.shape[1] // 2
    model = DecoderTrainee(vae)
    loop = _Loop(cfg, "decoder", sc, model, _vae_arch(cfg), resume, progress)
    fixed = cache.batch(cfg.seed, -1, 16, 0, 1)

    def loss_fn(step: int, micro: int) -> torch.Tensor:
        s = step * sc.grad_accum + micro
        x, idx = cache.batch(cfg.seed + 1, s, sc.batch_size * loop.acc.num_processes, loop.acc.process_index, loop.acc.num_processes)
        m = moments[idx]
        g = torch.Generator().manual_seed(cfg.seed * 7919 + s * 4099 + loop.acc.process_index)
        z = m[:, :c] + m[:, c:] * torch.randn(m[:, :c].shape, generator=g)  # (b, C, h, w) posterior sample
        with loop.acc.autocast():
            y = loop.model(z.to(loop.acc.device)).float()
        x = x.to(loop.acc.device)
        edge = ((y.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (y.diff(dim=-2) - x.diff(dim=-2)).abs().mean()) / 2
        return (y - x).abs().mean() + vc.edge_weight * edge

    def on_sample(step: int) -> None:
        m = DecoderTrainee(build_vae(vc, cfg.data.resolution)).eval()
        loop.ema.copy_to(m)
        x, idx = fixed
        with torch.no_grad():
            rec = m(moments[idx][:, :c]).clamp(-1, 1)
        _save_grid(torch.cat([x, rec]).add(1).div(2), loop.dir / "samples" / f"recon-{step:06d}.png", cols=16)

    return loop.run(loss_fn, on_sample)


def _unet_arch(cfg: TrainConfig) -> dict:
    return {"unet": cfg.unet_config().to_dict(), "text_encoder": asdict(cfg.text_encoder)}


def make_components(cfg: TrainConfig, vae, unet: UNet, text_encoder, scale: float):
    """Components for the pipeline/export from trained parts."""
    from ..checkpoints import Components
    from ..checkpoints.loader import load_tokenizer

    vae.register_to_config(scaling_factor=scale)
    return Components(unet.eval(), vae.eval(), text_encoder.eval(), load_tokenizer(None, "sd1"), dict(SCHEDULER),
                      kind="sd1", source=str(cfg.output_dir))


def sample_grid(components, prompts: list[str], path: Path, *, steps: int = 20, guidance: float = 5.0, seed: int = 0) -> None:
    """Generate one image per prompt with the pipeline and save them side by side."""
    from ..pipelines.text_to_image import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline(components, device=default_device(), dtype=torch.float32)
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, sampler="dpmpp_2m", seed=seed, progress=False)
    import numpy as np

    ims = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in out.images])
    _save_grid(ims, path, cols=len(prompts))


def train_unet(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> list[float]:
    """Stage 2: U-Net + text encoder on the frozen VAE's latents. Returns the logged losses."""
    from ..checkpoints.loader import load_tokenizer

    sc = cfg.train_unet
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt", progress)
    vae = load_trained_vae(cfg)
    moments, scale = encode_latents(cfg, cache, vae, progress, default_device())
    c = moments.shape[1] // 2
    tokens = TokenCache(load_tokenizer(None, "sd1"))
    captions = CaptionSampler(EMOJI_TEMPLATES if cfg.data.templates == "emoji" else ("{}",), p_drop=cfg.data.caption_dropout)
    torch.manual_seed(cfg.seed)
    ucfg = cfg.unet_config()
    model = Denoiser(UNet(ucfg), build_text_encoder(cfg.text_encoder))
    loop = _Loop(cfg, "unet", sc, model, _unet_arch(cfg), resume, progress)
    objective = DiffusionLoss(SCHEDULER, LossConfig(prediction_type="epsilon", min_snr_gamma=sc.min_snr_gamma, noise_offset=sc.noise_offset,
                                                    self_condition_prob=0.5 if ucfg.self_condition else 0.0))

    dev = loop.acc.device
    moments = moments.to(dev)  # (N, 2C, h, w), small: the whole latent set lives beside the model

    def loss_fn(step: int, micro: int) -> torch.Tensor:
        s = step * sc.grad_accum + micro
        g = torch.Generator(dev).manual_seed(cfg.seed * 7919 + s * 4099 + loop.acc.process_index)
        b = sc.batch_size * loop.acc.num_processes
        idx = torch.randint(len(cache), (b,), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + s))
        idx = idx[loop.acc.process_index::loop.acc.num_processes]
        m = moments[idx.to(dev)]
        eps = torch.randn(m[:, :c].shape, generator=g, device=dev)  # drawn either way: both choices see the same t and noise
        z = (m[:, :c] + m[:, c:] * eps if sc.posterior == "sample" else m[:, :c]) * scale  # (b, C, h, w)
        ids = tokens(captions_for(cache.records, idx.tolist(), captions, cfg.seed, s)).to(dev)
        with loop.acc.autocast():
            return objective(lambda x, t, ctx, **kw: loop.model(x, t, ctx, **kw), z, ids, generator=g)

    def ema_components():
        m = Denoiser(UNet(ucfg), build_text_encoder(cfg.text_encoder))
        loop.ema.copy_to(m)
        return make_components(cfg, vae, m.unet, m.text_encoder, scale)

    def on_sample(step: int) -> None:
        sample_grid(ema_components(), cfg.sample_prompts, loop.dir / "samples" / f"step-{step:06d}.png")

    return loop.run(loss_fn, on_sample)


def export(cfg: TrainConfig, out: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float16) -> Path:
    """The EMA weights of both stages as a diffusers folder (fp16 safetensors by default)."""
    from safetensors.torch import load_file

    from ..checkpoints import save_diffusers_folder
    from ..checkpoints.loader import check_generation_config

    folder = _ckpt_dir(cfg, "unet")
    if not (folder / "ema.safetensors").is_file():
        raise LatentDiffError(f"no trained U-Net in {folder}; run the unet stage first")
    check_same_architecture(json.loads((folder / "arch.json").read_text()), json.loads(json.dumps(_unet_arch(cfg))), "U-Net")
    vae = load_trained_vae(cfg)
    scale = torch.load(Path(cfg.output_dir) / "unet" / "latents.pt", weights_only=False)["scale"]
    model = Denoiser(UNet(cfg.unet_config()), build_text_encoder(cfg.text_encoder))
    model.load_state_dict(load_file(str(folder / "ema.safetensors")), strict=False)
    comps = make_components(cfg, vae.to(dtype), model.unet.to(dtype), model.text_encoder.to(dtype), scale)
    comps.generation = check_generation_config(cfg.generation, "generation")
    return save_diffusers_folder(comps, out or Path(cfg.output_dir) / "model")


def run(config: str | os.PathLike, *, stage: str = "all", resume: bool = False, out: str | None = None,
        progress: bool = True) -> Path | None:
    """Run one stage or all of them in order (vae → unet → export)."""
    if stage not in ("vae", "unet", "decoder", "export", "all"):
        raise LatentDiffError(f"unknown stage {stage!r} (vae, unet, decoder, export, all)")
    cfg = load_config(config)
    if stage in ("vae", "all"):
        train_vae(cfg, resume=resume, progress=progress)
    if stage in ("unet", "all"):
        train_unet(cfg, resume=resume, progress=progress)
    if stage == "decoder" or (stage == "all" and cfg.train_decoder.max_steps > 0):
        train_decoder(cfg, resume=resume, progress=progress)
    if stage in ("export", "all"):
        from accelerate import PartialState

        if PartialState().is_main_process:
            return export(cfg, out)
    return None
