"""Training from scratch: a small AutoencoderKL, then our U-Net jointly with a CLIP text encoder, then export.

Stages (`latentdiff train CONFIG.yaml --stage vae|unet|decoder|export|all`), each resumable (`--resume [CHECKPOINT]`):

* ``vae``: AutoencoderKL on pixels; L1 + image-gradient L1 (a cheap sharpness term, no pretrained
  perceptual network exists offline) + a small KL (LDM's KL-f8 recipe, https://arxiv.org/abs/2112.10752).
* ``unet``: the U-Net and the text encoder trained together on the frozen VAE's latents (LDM-style joint
  conditioning), ε-prediction on a DDPM scaled_linear schedule, EMA weights, 10% caption dropout for CFG.
* ``decoder`` (optional, `train_decoder.max_steps` > 0): more decoder training on the cached posteriors with the
  encoder frozen, so the latents the U-Net learned stay valid (independent of stage 2: may run beside it).
* ``export``: the EMA weights as a diffusers folder in fp16 safetensors, loadable by `load_components`.

The images are decoded once into an in-memory uint8 cache (small resolutions only), so a step costs the
model's compute alone. Batches are drawn from a generator seeded by (seed, step), so a resumed run sees
the same data as an uninterrupted one. Runs under `accelerate launch` (each process takes its slice). Every stage steps through loop.train_loop and
writes <output_dir>/<stage>/checkpoints/step-N + latest and <stage>/log.csv (checkpoints.RunFolder).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.dataset import EMOJI_TEMPLATES, CaptionSampler
from ..data.pixels import PixelCache
from ..errors import LatentDiffError
from ..fileio import atomic_write, read_json, read_safetensors, save_safetensors, write_json
from ..models.unet import UNet
from ..runtime import default_device
from .accelerator import new_accelerator
from .checkpoints import RunFolder, check_same_architecture, load_training_state, save_training_state
from .config import StageConfig, TrainConfig, load_config
from .ema import EMA
from .loop import LoopSettings, resume_step, train_loop
from .loss import DiffusionLoss, LossConfig
from .parts import (SCHEDULER, DecoderTrainee, Denoiser, TokenCache, VAETrainee, build_text_encoder, build_vae,
                    captions_for, make_components, sample_grid, save_grid)
from .schedule import lr_factor

log = logging.getLogger(__name__)
STAGES = ("vae", "unet", "decoder", "export", "all")


# -- checkpoints -----------------------------------------------------------------------------------------------------
def save_checkpoint(folder: Path, arch: dict, model: nn.Module, ema: EMA, optimizer, step: int) -> None:
    """Weights, EMA, optimizer and RNG state into one checkpoint folder; state.pt (with the step) last."""
    write_json(folder / "arch.json", arch)
    save_safetensors(model.state_dict(), folder / "model.safetensors")
    save_safetensors(ema.state_dict(), folder / "ema.safetensors")
    save_training_state(folder / "state.pt", {"step": step, "optimizer": optimizer.state_dict(),
                                              "torch_rng": torch.get_rng_state()})


def load_checkpoint(folder: Path, arch: dict, model: nn.Module, ema: EMA, optimizer, what: str) -> int:
    """Restore a checkpoint written by save_checkpoint; refuse another architecture with one line."""
    if not (folder / "arch.json").is_file():
        raise LatentDiffError(f"no checkpoint to resume in {folder}")
    check_same_architecture(read_json(folder / "arch.json"), json_plain(arch), what)
    state = load_training_state(folder / "state.pt")
    model.load_state_dict(read_safetensors(folder / "model.safetensors"))
    ema.load_state_dict(read_safetensors(folder / "ema.safetensors"), state["step"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def json_plain(obj):
    """`obj` as JSON would give it back (tuples → lists), so it compares equal to a saved arch.json."""
    import json

    return json.loads(json.dumps(obj))


def stage_checkpoint(cfg: TrainConfig, stage: str) -> Path | None:
    """The newest checkpoint folder of a stage (the old `checkpoint/` layout too), or None."""
    return RunFolder(Path(cfg.output_dir) / stage).latest()


def vae_arch(cfg: TrainConfig) -> dict:
    return {"resolution": cfg.data.resolution, **asdict(cfg.vae)} | {"kl_weight": None, "edge_weight": None}


def unet_arch(cfg: TrainConfig) -> dict:
    return {"unet": cfg.unet_config().to_dict(), "text_encoder": asdict(cfg.text_encoder)}


# -- one stage as the loop sees it -----------------------------------------------------------------------------------
class ScratchStage:
    """A from-scratch stage for loop.train_loop: the model (prepared), its EMA and AdamW; `loss_fn`/`sample_fn` set by
    the stage function."""

    def __init__(self, cfg: TrainConfig, name: str, sc: StageConfig, model: nn.Module, arch: dict):
        self.cfg, self.name, self.sc, self.arch = cfg, name, sc, arch
        self.acc = new_accelerator(mixed_precision=sc.mixed_precision, cpu=not torch.cuda.is_available())
        torch.manual_seed(cfg.seed + self.acc.process_index)
        self.dir = Path(cfg.output_dir) / name
        self.run_folder = RunFolder(self.dir, keep=sc.keep_checkpoints)
        self.ema = EMA(model, decay=sc.ema_decay)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sc.lr, weight_decay=sc.weight_decay,
                                betas=(0.9, 0.99))
        self.base_lrs = [g["lr"] for g in opt.param_groups]  # the LR is lr_factor(step) × these, set before each step
        self.model, self.optimizer = self.acc.prepare(model, opt)
        self.ddp_modules = [self.model]
        self.ema.to(self.acc.device)
        if self.acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts (norms, EMA) on tensor cores
        self.loss_fn = self.sample_fn = None

    def parameters(self):
        return list(self.model.parameters())

    def loss(self, step: int, micro: int) -> torch.Tensor:
        return self.loss_fn(step, micro)

    def after_step(self) -> None:
        self.ema.update(self.acc.unwrap_model(self.model))

    def save(self, folder: Path, step: int) -> None:
        save_checkpoint(folder, self.arch, self.acc.unwrap_model(self.model), self.ema, self.optimizer, step)

    def load(self, folder: Path) -> int:
        return load_checkpoint(folder, self.arch, self.acc.unwrap_model(self.model), self.ema, self.optimizer, self.name)

    def sample(self, step: int) -> None:
        self.sample_fn(step)

    def run(self, resume: str | bool | None, progress: bool) -> list[float]:
        """Train to max_steps with loop.train_loop (resuming as `resume` says); returns the logged losses."""
        sc = self.sc
        start = resume_step(self, self.run_folder, resume)
        settings = LoopSettings(
            max_steps=sc.max_steps, lr=lambda s: lr_factor(s, "wsd", sc.warmup_steps, sc.max_steps, sc.decay_steps),
            grad_accum=sc.grad_accum, samples_per_step=sc.batch_size * self.acc.num_processes * sc.grad_accum,
            log_every=sc.log_every, checkpoint_every=sc.checkpoint_every, checkpoint_minutes=sc.checkpoint_minutes,
            max_minutes=sc.max_minutes, sample_every=sc.sample_every, sample_at_end=sc.sample_every > 0,
            max_grad_norm=sc.max_grad_norm, name=f"train {self.name}", tensorboard=True)
        self.model.train()
        return train_loop(self, self.acc, self.run_folder, settings, start=start, resumed=bool(resume), progress=progress).losses


# -- the stages ------------------------------------------------------------------------------------------------------
def train_vae(cfg: TrainConfig, *, resume: str | bool | None = False, progress: bool = True) -> list[float]:
    """Stage 1: the autoencoder on pixels. Returns the logged losses."""
    sc, vc = cfg.train_vae, cfg.vae
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt", progress)
    torch.manual_seed(cfg.seed)
    vae = VAETrainee(build_vae(vc, cfg.data.resolution))
    loop = ScratchStage(cfg, "vae", sc, vae, vae_arch(cfg))
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
        save_grid(torch.cat([fixed, rec]).add(1).div(2), loop.dir / "samples" / f"recon-{step:06d}.png", cols=16)

    loop.loss_fn, loop.sample_fn = loss_fn, on_sample
    return loop.run(resume, progress)


def load_trained_vae(cfg: TrainConfig, *, decoder: bool = True):
    """The VAE stage's EMA weights (with the decoder stage's decoder when it ran and `decoder`), frozen."""
    folder = stage_checkpoint(cfg, "vae")
    if folder is None or not (folder / "ema.safetensors").is_file():
        raise LatentDiffError(f"no trained VAE in {Path(cfg.output_dir) / 'vae' / 'checkpoints'}; run the vae stage first")
    check_same_architecture(read_json(folder / "arch.json"), json_plain(vae_arch(cfg)), "VAE")
    vae = VAETrainee(build_vae(cfg.vae, cfg.data.resolution))
    vae.load_state_dict(read_safetensors(folder / "ema.safetensors"))
    tuned = stage_checkpoint(cfg, "decoder")
    if decoder and cfg.train_decoder.max_steps > 0 and tuned is not None:
        state = read_safetensors(tuned / "ema.safetensors")  # the encoder in it is the vae stage's, unchanged; take the decoder side only
        vae.load_state_dict({k: v for k, v in state.items() if ".decoder." in k or ".post_quant_conv." in k}, strict=False)
    return vae.vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(cfg: TrainConfig, cache: PixelCache, vae, progress: bool = True,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """Posterior mean and std of every image (N, 2C, h, w) on the CPU, cached to disk, and the scaling factor 1/std(z)."""
    path = Path(cfg.output_dir) / "unet" / "latents.pt"
    stamp = (stage_checkpoint(cfg, "vae") / "state.pt").stat().st_mtime_ns  # the VAE the latents came from
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


def train_decoder(cfg: TrainConfig, *, resume: str | bool | None = False, progress: bool = True) -> list[float]:
    """Stage 3 (optional, can run beside stage 2): more decoder training on the cached posteriors, encoder fixed.

    Fine-tuning only the decoder is how SD's ft-MSE VAE was improved; the U-Net's latents stay valid.
    """
    sc, vc = cfg.train_decoder, cfg.vae
    cache = PixelCache.load_or_build(cfg.data, Path(cfg.output_dir) / f"pixels-{cfg.data.resolution}.pt", progress)
    vae = load_trained_vae(cfg, decoder=False)
    moments, _ = encode_latents(cfg, cache, vae, progress, default_device())
    c = moments.shape[1] // 2
    model = DecoderTrainee(vae)
    loop = ScratchStage(cfg, "decoder", sc, model, vae_arch(cfg))
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
        save_grid(torch.cat([x, rec]).add(1).div(2), loop.dir / "samples" / f"recon-{step:06d}.png", cols=16)

    loop.loss_fn, loop.sample_fn = loss_fn, on_sample
    return loop.run(resume, progress)


def train_unet(cfg: TrainConfig, *, resume: str | bool | None = False, progress: bool = True) -> list[float]:
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
    loop = ScratchStage(cfg, "unet", sc, model, unet_arch(cfg))
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

    loop.loss_fn, loop.sample_fn = loss_fn, on_sample
    return loop.run(resume, progress)


def export(cfg: TrainConfig, out: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float16) -> Path:
    """The EMA weights of both stages as a diffusers folder (fp16 safetensors by default)."""
    from ..checkpoints import save_diffusers_folder
    from ..checkpoints.loader import check_generation_config

    folder = stage_checkpoint(cfg, "unet")
    if folder is None or not (folder / "ema.safetensors").is_file():
        raise LatentDiffError(f"no trained U-Net in {Path(cfg.output_dir) / 'unet' / 'checkpoints'}; run the unet stage first")
    check_same_architecture(read_json(folder / "arch.json"), json_plain(unet_arch(cfg)), "U-Net")
    vae = load_trained_vae(cfg)
    scale = torch.load(Path(cfg.output_dir) / "unet" / "latents.pt", weights_only=False)["scale"]
    model = Denoiser(UNet(cfg.unet_config()), build_text_encoder(cfg.text_encoder))
    model.load_state_dict(read_safetensors(folder / "ema.safetensors"), strict=False)
    comps = make_components(cfg, vae.to(dtype), model.unet.to(dtype), model.text_encoder.to(dtype), scale)
    comps.generation = check_generation_config(cfg.generation, "generation")
    return save_diffusers_folder(comps, out or Path(cfg.output_dir) / "model")


def run(config: str | os.PathLike, *, stage: str = "all", resume: str | bool | None = None, out: str | None = None,
        output_dir: str | None = None, progress: bool = True) -> Path | None:
    """Run one stage or all of them in order (vae → unet → export); `resume` True/"latest" continues each stage from
    its newest checkpoint, a folder (one stage only) from that checkpoint."""
    if stage not in STAGES:
        raise LatentDiffError(f"unknown stage {stage!r} ({', '.join(STAGES)})")
    if isinstance(resume, (str, os.PathLike)) and str(resume) != "latest" and stage in ("all", "export"):
        raise LatentDiffError("--resume CHECKPOINT names one stage's checkpoint; add --stage vae, unet or decoder")
    cfg = load_config(config, output_dir=output_dir)
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
