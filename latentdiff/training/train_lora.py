"""LoRA fine-tuning of a latent diffusion model: frozen base in half precision, trainable low-rank adapters in fp32.

`latentdiff train-lora CONFIG.yaml [--flag value ...]` (see cli/train_lora.py) or `train_lora(LoraTrainConfig(...))`.

* Data: a folder of images with kohya `.txt` captions or `metadata.jsonl` (data.ImageCaptionDataset), aspect
  buckets, optional instance token and regularisation (prior-preservation) images, caption dropout.
* Frozen encoders run once: VAE latent moments per image (and per flip) and CLIP embeddings per caption are cached
  on disk (training.cache); a step then costs the U-Net alone. The latent is still sampled from the cached
  mean/log-variance each step, as when encoding on the fly.
* accelerate: fp16/bf16 autocast, gradient accumulation, `accelerate launch` for several GPUs (each process takes
  every n-th batch); gradient checkpointing; AdamW or 8-bit AdamW (bitsandbytes); min-SNR-γ, noise offset,
  ε or v targets through the shared DiffusionLoss.
* Determinism: the batch order, caption dropout, flips, noise and timesteps of step s depend on (seed, s) only,
  so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..fileio import atomic_folder
from ..errors import LatentDiffError
from .cache import TensorCache, module_fingerprint
from .checkpointing import CSVLog, check_same_architecture, load_training_state, save_training_state, write_json
from .data import BucketBatchSampler, ImageCaptionDataset, make_buckets
from .diffusion import DiffusionLoss, LossConfig
from .lora_config import ADAPTER, LoraTrainConfig, load_config  # noqa: F401  (load_config re-exported)
from .schedule import lr_factor, set_lr

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One training image: which dataset, which index, and its (dropout-free) caption."""

    dataset: ImageCaptionDataset
    index: int
    caption: str
    regularisation: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.dataset.target_size(self.index)

    @cached_property
    def _file_id(self) -> str:
        r = self.dataset.records[self.index]
        stat = r.path.stat()
        return f"{r.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.size}"

    def cache_key(self, flip: bool) -> str:
        """Identity of this image's latent: file, size, mtime, target size, mirrored or not."""
        return f"{self._file_id}|{'flip' if flip else ''}"


@dataclass
class LoraTrainResult:
    """What a run produced."""

    files: list[Path]                     # the final LoRA files
    steps: int                            # optimizer steps this run did (max_steps − the resumed step)
    eval_loss_start: float | None         # fixed-noise loss before training (None when resumed or eval_items = 0)
    eval_loss_end: float | None
    seconds: float
    validation_images: list[Path] = field(default_factory=list)


class LoraTrainer:
    """Holds the frozen model, the adapter, the data and the optimizer of one run; `run()` trains."""

    def __init__(self, cfg: LoraTrainConfig, *, components=None, progress: bool = True):
        """`components` (checkpoints.Components) trains an in-memory model instead of loading cfg.model."""
        from ..runtime import cpu_has_native_bf16
        from .accelerator import new_accelerator

        self.cfg, self.progress = cfg, progress
        mp = cfg.mixed_precision
        if mp == "auto":
            cuda = torch.cuda.is_available() and cfg.device != "cpu"
            mp = "fp16" if cuda else ("bf16" if cpu_has_native_bf16() else "no")
        self.acc = new_accelerator(mixed_precision=mp, cpu=cfg.device == "cpu")
        if mp == "fp16" and self.acc.device.type == "cpu":
            raise LatentDiffError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on the CPU")
        self.mixed_precision = mp
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32)
        self.out = Path(cfg.output_dir)
        self._load_model(components)
        self._load_data()
        self._add_adapter()

    # -- setup -------------------------------------------------------------------------------------------------------
    def _load_model(self, components) -> None:
        from ..checkpoints.loader import resolve_model
        from ..lora.io import weights_hash
        from ..pipelines.text_to_image import LatentDiffusionPipeline

        cfg = self.cfg
        # Building the pipeline first moves and casts the frozen parts (VAE upcast to fp32 under fp16, as for sampling);
        # the adapter added afterwards stays in fp32. The same pipeline draws the validation images.
        if components is None:
            self.model_path = resolve_model(cfg.model)
            self.pipe = LatentDiffusionPipeline.from_pretrained(self.model_path, device=self.acc.device, dtype=self.weight_dtype,
                                                                prediction_type=cfg.prediction_type or None)
        else:
            self.model_path = ""
            if cfg.prediction_type:
                components.scheduler_config["prediction_type"] = cfg.prediction_type
            self.pipe = LatentDiffusionPipeline(components, device=self.acc.device, dtype=self.weight_dtype, model_name="memory")
        c = self.pipe.components
        for m in (c.unet, c.vae, c.text_encoder):
            m.requires_grad_(False).eval()
        self.unet, self.vae, self.text_encoder, self.tokenizer = c.unet, c.vae, c.text_encoder, c.tokenizer
        self.loss = DiffusionLoss(c.scheduler_config, LossConfig(prediction_type=c.prediction_type,
                                                                 min_snr_gamma=cfg.min_snr_gamma, noise_offset=cfg.noise_offset))
        self.base_hash = weights_hash(self.model_path) if self.model_path else ""
        self.native = c.unet.config.sample_size * self.pipe.vae_scale_factor

    def _dataset(self, root: str) -> ImageCaptionDataset:
        cfg = self.cfg
        res = cfg.resolution or self.native
        buckets = make_buckets(res, step=64, max_ratio=cfg.max_aspect) if cfg.buckets and res >= 64 else None
        return ImageCaptionDataset(root, resolution=res, split="train", captions=None, center_crop=not cfg.random_crop,
                                   random_flip=False, buckets=buckets, seed=cfg.seed, progress=self.progress and self.acc.is_main_process)

    def _load_data(self) -> None:
        cfg = self.cfg
        train = self._dataset(cfg.data)
        token = cfg.instance_token.strip()
        self.items = [Item(train, i, f"{token}, {r.text}" if token else r.text) for i, r in enumerate(train.records)]
        self.dataset_size = len(self.items)
        if cfg.reg_data:
            reg = self._dataset(cfg.reg_data)
            self.items += [Item(reg, i, r.text, regularisation=True) for i, r in enumerate(reg.records)]
        sizes = sorted({it.size for it in self.items})
        self.bucket_ids = [sizes.index(it.size) for it in self.items]
        self.sampler = BucketBatchSampler(self.bucket_ids, cfg.batch_size, shuffle=True, drop_last=False, seed=cfg.seed)
        self.batches_per_epoch = len(self.sampler) // self.acc.num_processes
        if self.batches_per_epoch < 1:
            raise LatentDiffError(f"{len(self.items)} images make fewer batches than the {self.acc.num_processes} processes")
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        self.latents = self.text = None
        self._unpark_encoders()
        with self.acc.main_process_first():
            if cfg.cache_latents:
                self._cache_latents()
            if cfg.cache_text and not cfg.train_text_encoder:
                self._cache_text()
        self._park_encoders()

    def _cache_latents(self) -> None:
        """VAE moments (mean ‖ log-variance, (2C, h, w)) of every image (and its mirror image), computed once."""
        fp = module_fingerprint(self.vae, {"dtype": str(self.vae.dtype)})
        self.latents = TensorCache(self.cache_dir / "latents.safetensors", fp)
        keys = {it.cache_key(flip): (it, flip) for it in self.items for flip in ((False, True) if self.cfg.random_flip else (False,))}

        @torch.no_grad()
        def compute(batch: list[str]) -> list[torch.Tensor]:
            pixels = []
            for k in batch:
                it, flip = keys[k]
                px = it.dataset[it.index]["pixel_values"]  # (3, H, W) in [-1, 1]
                pixels.append(px.flip(-1) if flip else px)
            x = torch.stack(pixels).to(self.acc.device, self.vae.dtype)  # (B, 3, H, W)
            return list(self.vae.encode(x).latent_dist.parameters.float())  # (B, 2C, h, w)

        n = self.latents.fill(list(keys), compute, batch_size=8, desc="cache latents", progress=self.progress,
                              group=lambda k: keys[k][0].size)
        if n and self.acc.is_main_process:
            log.info("cached %d latents in %s", n, self.latents.path)

    def _park_encoders(self) -> None:
        """Once their outputs are cached, the frozen VAE / text encoder leave the GPU (validation borrows them back)."""
        if self.acc.device.type != "cuda":
            return
        if self.latents is not None:
            self.vae.to("cpu")
        if self.text is not None:
            self.text_encoder.to("cpu")
        torch.cuda.empty_cache()

    def _unpark_encoders(self) -> None:
        self.vae.to(self.acc.device)
        self.text_encoder.to(self.acc.device)

    def _cache_text(self) -> None:
        """CLIP embeddings (77, D) of every caption and of the empty caption, computed once."""
        fp = module_fingerprint(self.text_encoder, {"dtype": str(self.text_encoder.dtype)})
        self.text = TensorCache(self.cache_dir / "text.safetensors", fp)
        captions = ["", *dict.fromkeys(it.caption for it in self.items)]
        self.text.fill(captions, lambda batch: list(self._encode_text(batch)), batch_size=32, desc="cache captions",
                       progress=self.progress)

    def _add_adapter(self) -> None:
        from ..lora.attach import add_trainable, component_modules, find_targets

        cfg = self.cfg
        modules = component_modules(self.unet, self.text_encoder)
        self.unet_keys = find_targets(modules, "unet", cfg.targets)
        self.text_keys = find_targets(modules, "text_encoder", cfg.text_targets) if cfg.train_text_encoder else []
        init = True if cfg.init == "kaiming" else "gaussian"
        torch.manual_seed(cfg.seed)  # the adapter's initial lora_A
        kw = dict(rank=cfg.rank, alpha=cfg.alpha, adapter=ADAPTER, dropout=cfg.dropout, init=init)
        self.unet_params = add_trainable(self.unet, None, self.unet_keys, **kw)
        self.text_params = add_trainable(self.unet, self.text_encoder, self.text_keys, **kw) if self.text_keys else []
        for p in self.unet_params + self.text_params:
            p.data = p.data.float()  # trainable weights in fp32 even when the frozen base is in half precision
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.text_params:
                self.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        groups = [{"params": self.unet_params, "lr": cfg.lr}]
        if self.text_params:
            groups.append({"params": self.text_params, "lr": cfg.text_lr})
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise LatentDiffError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
            optimizer = bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.base_lrs = [g["lr"] for g in groups]  # the LR is lr_factor(step) × these, written before each step
        self.lr = cfg.lr
        if self.text_params:
            self.unet_ddp, self.text_ddp, self.optimizer = self.acc.prepare(self.unet, self.text_encoder, optimizer)
        else:
            self.unet_ddp, self.optimizer = self.acc.prepare(self.unet, optimizer)
            self.text_ddp = self.text_encoder

    # -- pieces of a step --------------------------------------------------------------------------------------------
    def _encode_text(self, captions: list[str], encoder=None) -> torch.Tensor:
        """Captions → (B, 77, D) CLIP embeddings; captions over 75 tokens are cut, as in diffusers' training scripts."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.acc.device)  # (B, 77)
        return (encoder or self.text_encoder)(ids)[0]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches of one epoch (every n-th of the shuffled bucket batches)."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self.sampler.set_epoch(epoch)
            mine = list(self.sampler)[self.acc.process_index::self.acc.num_processes][: self.batches_per_epoch]
            self._epoch_cache = (epoch, mine)
        return self._epoch_cache[1]

    def _micro_batch(self, micro: int) -> list[Item]:
        epoch, pos = divmod(micro, self.batches_per_epoch)
        return [self.items[i] for i in self._epoch_batches(epoch)[pos]]

    def _latents(self, items: list[Item], flips: list[bool], g: torch.Generator, epoch: int) -> torch.Tensor:
        """x0 = (mean + σ ε) · scaling (B, C, h, w), from the cache or by encoding the images now."""
        cfg_vae = self.vae.config
        if self.latents is not None:
            moments = torch.stack([self.latents[it.cache_key(f)] for it, f in zip(items, flips)]).to(self.acc.device)
        else:
            pixels = []
            for it, f in zip(items, flips):
                it.dataset.set_epoch(epoch)  # the random crop of this epoch
                px = it.dataset[it.index]["pixel_values"]
                pixels.append(px.flip(-1) if f else px)
            with torch.no_grad():
                x = torch.stack(pixels).to(self.acc.device, self.vae.dtype)
                moments = self.vae.encode(x).latent_dist.parameters.float()
        mean, logvar = moments.chunk(2, dim=1)  # (B, C, h, w) each
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        x0 = mean + std * torch.randn(mean.shape, generator=g, device=mean.device)
        shift = getattr(cfg_vae, "shift_factor", None) or 0.0
        return ((x0 - shift) * cfg_vae.scaling_factor).to(self.weight_dtype)

    def _context(self, captions: list[str]) -> torch.Tensor:
        if self.text is not None:
            return torch.stack([self.text[c] for c in captions]).to(self.acc.device, self.weight_dtype)  # (B, 77, D)
        if self.text_params:
            return self._encode_text(captions, self.text_ddp)
        with torch.no_grad():
            return self._encode_text(captions)

    def _step_loss(self, micro: int) -> torch.Tensor:
        """Loss of one micro-batch; every random draw depends on (seed, micro) only."""
        cfg = self.cfg
        seed = (cfg.seed * 1_000_003 + micro * (self.acc.num_processes or 1) + self.acc.process_index) % 2**63
        rng, g = random.Random(seed), torch.Generator(self.acc.device).manual_seed(seed)
        items = self._micro_batch(micro)
        captions = ["" if rng.random() < cfg.caption_dropout else it.caption for it in items]
        flips = [cfg.random_flip and rng.random() < 0.5 for _ in items]
        x0 = self._latents(items, flips, g, micro // self.batches_per_epoch)
        context = self._context(captions)
        reg = torch.tensor([it.regularisation for it in items], device=x0.device)
        with self.acc.autocast():
            if not reg.any() or reg.all():
                weight = cfg.prior_loss_weight if reg.all() else 1.0
                return weight * self.loss(self.unet_ddp, x0, context, g)
            # prior preservation: instance and class images weighted separately, averaged per image
            inst, prior = ~reg, reg
            loss_i = self.loss(self.unet_ddp, x0[inst], context[inst], g)
            loss_p = self.loss(self.unet_ddp, x0[prior], context[prior], g)
            return (inst.sum() * loss_i + cfg.prior_loss_weight * prior.sum() * loss_p) / len(items)

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        """Mean loss over the first `eval_items` images with fixed noise and timesteps (comparable across steps)."""
        n = min(self.cfg.eval_items, self.dataset_size)
        if n <= 0:
            return None
        self._set_train(False)
        total = 0.0
        for i in range(n):
            g = torch.Generator(self.acc.device).manual_seed(10_000 + i)
            it = self.items[i]
            x0 = self._latents([it], [False], g, 0)
            with self.acc.autocast():
                total += float(self.loss(self.unet, x0, self._context([it.caption]), g))
        self._set_train(True)
        return total / n

    def _set_train(self, on: bool) -> None:
        self.unet.train(on)  # gradient checkpointing and LoRA dropout act in train mode only
        if self.text_params:
            self.text_encoder.train(on)

    # -- files ---------------------------------------------------------------------------------------------------------
    def lora_state(self):
        from ..lora.attach import extract_state

        return extract_state(self.unet, self.text_encoder if self.text_params else None, ADAPTER)

    def metadata(self, steps: int):
        from ..lora.io import LoraMetadata

        cfg = self.cfg
        targets = ",".join(cfg.targets + ([f"text:{t}" for t in cfg.text_targets] if self.text_params else []))
        return LoraMetadata(base_model="default" if cfg.model in ("", "default") else cfg.model, base_model_hash=self.base_hash,
                            kind=self.pipe.components.kind, prediction_type=self.pipe.components.prediction_type,
                            rank=cfg.rank, alpha=cfg.alpha, targets=targets, steps=steps, dataset_size=self.dataset_size,
                            resolution=cfg.resolution or self.native)

    def save_files(self, folder: Path, steps: int, formats: list[str]) -> list[Path]:
        from ..lora.io import PEFT_FILE_NAME, save_lora

        state, meta = self.lora_state(), self.metadata(steps)
        names = {"peft": PEFT_FILE_NAME, "kohya": f"{self.cfg.output_name}.safetensors"}
        return [save_lora(state, folder / names[f], format=f, metadata=meta) for f in formats]

    def arch(self) -> dict:
        """The settings a checkpoint must share with the config to be resumed."""
        cfg = self.cfg
        return {"model_hash": self.base_hash, "rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
                "train_text_encoder": cfg.train_text_encoder, "text_targets": list(cfg.text_targets) if cfg.train_text_encoder else [],
                "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "processes": self.acc.num_processes}

    def save_checkpoint(self, step: int) -> Path:
        """checkpoints/step-NNNNNN/ with the LoRA (peft file) and the optimizer state, written to a temp folder then renamed."""
        root = self.out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:06d}"
        with atomic_folder(final) as tmp:
            self.save_files(tmp, step, ["peft"])
            scaler = getattr(self.acc, "scaler", None)
            save_training_state(tmp / "state.pt", {
                "step": step, "arch": self.arch(), "config": asdict(self.cfg), "optimizer": self.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler else None})  # the LR is a function of the step: no scheduler state
        done = sorted(p for p in root.glob("step-*") if (p / "state.pt").is_file())
        for old in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @torch.no_grad()
    def resume(self, where: str) -> int:
        """Load a checkpoint ("latest" or a folder): LoRA weights and optimizer state; returns its step."""
        from ..lora.attach import component_modules, fit_module
        from ..lora.io import read_lora

        if where == "latest":
            done = sorted(p for p in (self.out / "checkpoints").glob("step-*") if (p / "state.pt").is_file())
            if not done:
                raise LatentDiffError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
            folder = done[-1]
        else:
            folder = Path(where)
        state = load_training_state(folder / "state.pt")
        check_same_architecture(state["arch"], self.arch(), "LoRA")
        modules = component_modules(self.unet, self.text_encoder)
        lora = read_lora(folder)
        for key, m in lora.state.items():
            if key not in modules or ADAPTER not in getattr(modules[key], "lora_A", {}):
                raise LatentDiffError(f"cannot resume: the checkpoint adapts {key}, which this run does not train")
            m = fit_module(m, modules[key], key)
            modules[key].lora_A[ADAPTER].weight.copy_(m.down)
            modules[key].lora_B[ADAPTER].weight.copy_(m.up)
        self.optimizer.load_state_dict(state["optimizer"])
        scaler = getattr(self.acc, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        return int(state["step"])

    def validate(self, step: int) -> list[Path]:
        """Draw the validation prompts with the adapter as it is now; PNGs with parameters in <output_dir>/validation."""
        from ..pipelines.params import save_png

        cfg = self.cfg
        if not cfg.validation_prompts or not self.acc.is_main_process:
            return []
        self._set_train(False)
        self._unpark_encoders()
        folder = self.out / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        out = self.pipe(cfg.validation_prompts, num_inference_steps=cfg.validation_steps, guidance_scale=cfg.validation_guidance,
                        sampler=cfg.validation_sampler, seed=cfg.validation_seed, progress=False)
        self._park_encoders()
        self._set_train(True)
        paths = []
        for i, (image, params) in enumerate(zip(out.images, out.params)):
            params.extra = {"LoRA step": step}
            paths.append(save_png(image, params, folder / f"step-{step:06d}-{i}.png"))
        return paths

    def train_step(self, step: int) -> list[torch.Tensor]:
        """One optimizer step (grad_accum micro-batches); returns the micro-batch losses (0-d tensors, not synced)."""
        cfg, acc = self.cfg, self.acc
        self.lr = set_lr(self.optimizer, self.base_lrs, lr_factor(step, cfg.lr_scheduler, cfg.warmup_steps, cfg.max_steps))
        losses = []
        for k in range(cfg.grad_accum):
            sync = nullcontext() if k == cfg.grad_accum - 1 else acc.no_sync(self.unet_ddp)
            with sync:
                loss = self._step_loss(step * cfg.grad_accum + k)
                acc.backward(loss / cfg.grad_accum)
            losses.append(loss.detach())
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.unet_params + self.text_params, cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses

    # -- the loop --------------------------------------------------------------------------------------------------------
    def run(self, resume: str | None = None) -> LoraTrainResult:
        cfg, acc = self.cfg, self.acc
        t0 = time.perf_counter()
        start = self.resume(resume) if resume else 0
        eval_start = self.eval_loss() if start == 0 else None
        logger = CSVLog(self.out / "log.csv", ["step", "loss", "lr", "seconds"],
                        resume_step=start if resume else None) if acc.is_main_process else None
        if acc.is_main_process:
            write_json(self.out / "train_config.json", asdict(cfg))
        self._set_train(True)
        bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train-lora", unit="step",
                   disable=not (self.progress and acc.is_main_process))
        images: list[Path] = []
        running = []
        for step in bar:
            running += self.train_step(step)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:  # syncs with the GPU only here
                mean = float(torch.stack(running).float().mean())
                running = []
                if not math.isfinite(mean):
                    raise LatentDiffError(f"loss became {mean} by step {done}; lower lr or use bf16/fp32")
            if logger and (done % cfg.log_every == 0 or done == cfg.max_steps):
                logger.write(step=done, loss=f"{mean:.6f}", lr=f"{self.lr:.3e}",
                             seconds=f"{time.perf_counter() - t0 + logger.seconds_offset:.1f}")
                bar.set_postfix(loss=f"{mean:.4f}")
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self.save_checkpoint(done)
            if cfg.validation_every and done % cfg.validation_every == 0 and done < cfg.max_steps:
                images += self.validate(done)
        acc.wait_for_everyone()
        files = self.save_files(self.out, cfg.max_steps, cfg.save_formats) if acc.is_main_process else []
        eval_end = self.eval_loss()
        images += self.validate(cfg.max_steps)
        return LoraTrainResult(files, cfg.max_steps - start, eval_start, eval_end, time.perf_counter() - t0, images)


def train_lora(cfg: LoraTrainConfig, *, resume: str | None = None, progress: bool = True) -> LoraTrainResult:
    """Train a LoRA as the config says; `resume` = "latest" or a checkpoint folder continues a run."""
    cfg.check()
    return LoraTrainer(cfg, progress=progress).run(resume)
