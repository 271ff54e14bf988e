"""LoRA fine-tuning of a latent diffusion model: frozen base in half precision, trainable low-rank adapters in fp32.

`latentdiff train-lora CONFIG.yaml [--flag value ...]` (see cli/train_lora.py) or `train_lora(LoraTrainConfig(...))`;
the data side is lora_data.py, the loop (accumulation, LR per step, checkpoints/step-N + latest, log.csv) loop.py.

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

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import LatentDiffError
from ..fileio import write_json
from .checkpoints import STATE, RunFolder, check_same_architecture, load_training_state, save_training_state
from .lora_config import ADAPTER, LoraTrainConfig, load_config  # noqa: F401  (load_config re-exported)
from .lora_data import LoraData
from .loop import LoopSettings, optimizer_step, resume_step, train_loop
from .loss import DiffusionLoss, LossConfig
from .schedule import lr_factor

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
        c = self.pipe.components
        self.data = LoraData(cfg, self.acc, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                             weight_dtype=self.weight_dtype, native=self.native, out=self.out, progress=progress,
                             text_encoder_2=c.text_encoder_2, tokenizer_2=c.tokenizer_2,
                             aesthetic=bool(c.extra.get("requires_aesthetics_score", False)))
        self._add_adapter()
        self.images: list[Path] = []

    # -- setup -------------------------------------------------------------------------------------------------------
    def _load_model(self, components) -> None:
        from ..checkpoints.loader import resolve_model
        from ..lora.io import weights_hash
        from ..pipelines import LatentDiffusionPipeline

        cfg = self.cfg
        # Building the pipeline first moves and casts the frozen parts (VAE upcast to fp32 under fp16, as for sampling);
        # the adapter added afterwards stays in fp32. The same pipeline draws the validation images.
        if components is None:
            self.model_path = resolve_model(cfg.model)
            self.pipe = LatentDiffusionPipeline.from_pretrained(self.model_path, device=self.acc.device, dtype=self.weight_dtype,
                                                                prediction_type=cfg.prediction_type or None, fast=False)
        else:
            self.model_path = ""
            if cfg.prediction_type:
                components.scheduler_config["prediction_type"] = cfg.prediction_type
            self.pipe = LatentDiffusionPipeline(components, device=self.acc.device, dtype=self.weight_dtype, model_name="memory",
                                              fast=False)  # inference levers stay off while training
        c = self.pipe.components
        for m in (c.unet, c.vae, c.text_encoder, c.text_encoder_2):
            if m is not None:
                m.requires_grad_(False).eval()
        self.unet, self.vae, self.text_encoder, self.tokenizer = c.unet, c.vae, c.text_encoder, c.tokenizer
        self.text_encoder_2 = c.text_encoder_2  # SDXL's bigG (None for SD1/SD2)
        self.objective = DiffusionLoss(c.scheduler_config, LossConfig(prediction_type=c.prediction_type,
                                                                 min_snr_gamma=cfg.min_snr_gamma, noise_offset=cfg.noise_offset))
        self.base_hash = weights_hash(self.model_path) if self.model_path else ""
        self.native = c.unet.config.sample_size * self.pipe.vae_scale_factor

    def _add_adapter(self) -> None:
        from ..lora.attach import add_trainable, component_modules, find_targets

        cfg = self.cfg
        modules = component_modules(self.unet, self.text_encoder, self.text_encoder_2)
        self.unet_keys = find_targets(modules, "unet", cfg.targets)
        # the trained text encoders: CLIP (SD1/SD2), both of SDXL base's, bigG alone for the refiner
        self.text_models = [m for m in (self.text_encoder, self.text_encoder_2) if m is not None] if cfg.train_text_encoder else []
        self.text_keys = [k for comp, m in (("text_encoder", self.text_encoder), ("text_encoder_2", self.text_encoder_2))
                          if m is not None and cfg.train_text_encoder for k in find_targets(modules, comp, cfg.text_targets)]
        init = True if cfg.init == "kaiming" else "gaussian"
        torch.manual_seed(cfg.seed)  # the adapter's initial lora_A
        kw = dict(rank=cfg.rank, alpha=cfg.alpha, adapter=ADAPTER, dropout=cfg.dropout, init=init)
        self.unet_params = add_trainable(self.unet, None, self.unet_keys, **kw)
        self.text_params = add_trainable(self.unet, self.text_encoder, self.text_keys, text_encoder_2=self.text_encoder_2,
                                         **kw) if self.text_keys else []
        for p in self.unet_params + self.text_params:
            p.data = p.data.float()  # trainable weights in fp32 even when the frozen base is in half precision
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for m in self.text_models:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

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
        prepared = self.acc.prepare(self.unet, *self.text_models, optimizer)
        self.unet_ddp, self.text_ddps, self.optimizer = prepared[0], list(prepared[1:-1]), prepared[-1]
        self.ddp_modules = [self.unet_ddp] + self.text_ddps  # the loop's no_sync set

    # -- pieces of a step --------------------------------------------------------------------------------------------
    # -- the loop's Stage ---------------------------------------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return self.unet_params + self.text_params

    def loss(self, step: int, micro: int) -> torch.Tensor:
        return self._step_loss(step * self.cfg.grad_accum + micro)

    def after_step(self) -> None:
        pass

    def sample(self, step: int) -> None:
        self.images += self.validate(step)

    def _step_loss(self, micro: int) -> torch.Tensor:
        """Loss of one micro-batch; every random draw depends on (seed, micro) only."""
        cfg = self.cfg
        seed = (cfg.seed * 1_000_003 + micro * (self.acc.num_processes or 1) + self.acc.process_index) % 2**63
        rng, g = random.Random(seed), torch.Generator(self.acc.device).manual_seed(seed)
        items = self.data.micro_batch(micro)
        captions = ["" if rng.random() < cfg.caption_dropout else it.caption for it in items]
        flips = [cfg.random_flip and rng.random() < 0.5 for _ in items]
        x0 = self.data.latents_of(items, flips, g, micro // self.data.batches_per_epoch)
        context, model = self._conditioned(self.unet_ddp, items, captions, self.text_ddps or None)
        reg = torch.tensor([it.regularisation for it in items], device=x0.device)
        with self.acc.autocast():
            if not reg.any() or reg.all():
                weight = cfg.prior_loss_weight if reg.all() else 1.0
                return weight * self.objective(model, x0, context, g)
            # prior preservation: instance and class images weighted separately, averaged per image
            inst, prior = ~reg, reg
            loss_i = self.objective(_rows(model, inst), x0[inst], context[inst], g)
            loss_p = self.objective(_rows(model, prior), x0[prior], context[prior], g)
            return (inst.sum() * loss_i + cfg.prior_loss_weight * prior.sum() * loss_p) / len(items)

    def _conditioned(self, unet, items, captions: list[str], trained_encoders: list | None = None):
        """(context, model) of a micro-batch: SD1/SD2 the U-Net itself; SDXL the U-Net with its added conditioning
        (pooled text (B, P) and time ids (B, 6)) bound, as pipelines.sdxl.condition binds it for sampling.
        `trained_encoders`: the text encoders being trained, run now with gradients."""
        if not self.data.sdxl:
            return self.data.context(captions, trained_encoders[0] if trained_encoders else None), unet
        from ..pipelines.sdxl import AddedCondUNet

        context, pooled = self.data.sdxl_context(captions, trained_encoders)  # (B, 77, D1+D2), (B, P)
        return context, AddedCondUNet(unet, pooled, self.data.time_ids(items))

    @torch.no_grad()
    def eval_loss(self) -> float | None:
        """Mean loss over the first `eval_items` images with fixed noise and timesteps (comparable across steps)."""
        n = min(self.cfg.eval_items, self.data.dataset_size)
        if n <= 0:
            return None
        self._set_train(False)
        total = 0.0
        for i in range(n):
            g = torch.Generator(self.acc.device).manual_seed(10_000 + i)
            it = self.data.items[i]
            x0 = self.data.latents_of([it], [False], g, 0)
            with self.acc.autocast():
                context, model = self._conditioned(self.unet, [it], [it.caption])
                total += float(self.objective(model, x0, context, g))
        self._set_train(True)
        return total / n

    def _set_train(self, on: bool) -> None:
        self.unet.train(on)  # gradient checkpointing and LoRA dropout act in train mode only
        for m in self.text_models:
            m.train(on)

    # -- files ---------------------------------------------------------------------------------------------------------
    def lora_state(self):
        from ..lora.attach import extract_state

        trained = bool(self.text_params)
        return extract_state(self.unet, self.text_encoder if trained else None, ADAPTER, self.text_encoder_2 if trained else None)

    def metadata(self, steps: int):
        from ..lora.io import LoraMetadata

        cfg = self.cfg
        targets = ",".join(cfg.targets + ([f"text:{t}" for t in cfg.text_targets] if self.text_params else []))
        return LoraMetadata(base_model="default" if cfg.model in ("", "default") else cfg.model, base_model_hash=self.base_hash,
                            kind=self.pipe.components.kind, prediction_type=self.pipe.components.prediction_type,
                            rank=cfg.rank, alpha=cfg.alpha, targets=targets, steps=steps, dataset_size=self.data.dataset_size,
                            resolution=cfg.resolution or self.native)

    def save_files(self, folder: Path, steps: int, formats: list[str]) -> list[Path]:
        from ..lora.io import PEFT_FILE_NAME, save_lora

        state, meta = self.lora_state(), self.metadata(steps)
        names = {"peft": PEFT_FILE_NAME, "kohya": f"{self.cfg.output_name}.safetensors"}
        return [save_lora(state, folder / names[f], format=f, metadata=meta, unet=self.unet) for f in formats]

    def arch(self) -> dict:
        """The settings a checkpoint must share with the config to be resumed."""
        cfg = self.cfg
        return {"model_hash": self.base_hash, "rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets),
                "train_text_encoder": cfg.train_text_encoder, "text_targets": list(cfg.text_targets) if cfg.train_text_encoder else [],
                "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "processes": self.acc.num_processes}

    def save(self, folder: Path, step: int) -> None:
        """A checkpoint folder: the LoRA (peft file) and the optimizer state; the LR is a function of the step."""
        self.save_files(folder, step, ["peft"])
        scaler = getattr(self.acc, "scaler", None)
        save_training_state(folder / STATE, {
            "step": step, "arch": self.arch(), "config": asdict(self.cfg), "optimizer": self.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None})

    @torch.no_grad()
    def load(self, folder: Path) -> int:
        """Restore a checkpoint folder: LoRA weights and optimizer state; returns its step."""
        from ..lora.attach import component_modules, fit_module
        from ..lora.io import read_lora

        state = load_training_state(folder / STATE)
        check_same_architecture(state["arch"], self.arch(), "LoRA")
        modules = component_modules(self.unet, self.text_encoder, self.text_encoder_2)
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
        from ..pipelines.png_metadata import save_png

        cfg = self.cfg
        if not cfg.validation_prompts or not self.acc.is_main_process:
            return []
        self._set_train(False)
        self.data.unpark_encoders()
        folder = self.out / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        out = self.pipe(cfg.validation_prompts, num_inference_steps=cfg.validation_steps, guidance_scale=cfg.validation_guidance,
                        sampler=cfg.validation_sampler, seed=cfg.validation_seed, progress=False)
        self.data.park_encoders()
        self._set_train(True)
        paths = []
        for i, (image, params) in enumerate(zip(out.images, out.params)):
            params.extra = {"LoRA step": step}
            paths.append(save_png(image, params, folder / f"step-{step:06d}-{i}.png"))
        return paths

    def settings(self) -> LoopSettings:
        """The loop's settings from the recipe."""
        cfg = self.cfg
        return LoopSettings(
            max_steps=cfg.max_steps, lr=lambda s: lr_factor(s, cfg.lr_scheduler, cfg.warmup_steps, cfg.max_steps),
            grad_accum=cfg.grad_accum, samples_per_step=cfg.batch_size * self.acc.num_processes * cfg.grad_accum,
            log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, checkpoint_at_end=False,
            sample_every=cfg.validation_every, sample_at_end=True, max_grad_norm=cfg.max_grad_norm, name="train-lora")

    def train_step(self, step: int) -> list[torch.Tensor]:
        """One optimizer step (grad_accum micro-batches) as the loop takes it; returns the micro-batch losses."""
        return optimizer_step(self, self.acc, step, self.settings())[1]

    def run(self, resume: str | bool | None = None) -> LoraTrainResult:
        """Train to max_steps through loop.train_loop (from the checkpoint `resume` names), then write the files."""
        cfg, acc = self.cfg, self.acc
        t0 = time.perf_counter()
        run = RunFolder(self.out, keep=cfg.keep_checkpoints)
        start = resume_step(self, run, resume)
        eval_start = self.eval_loss() if start == 0 else None
        if acc.is_main_process:
            write_json(self.out / "train_config.json", asdict(cfg))
        self._set_train(True)
        train_loop(self, acc, run, self.settings(), start=start, resumed=bool(resume), progress=self.progress)
        files = self.save_files(self.out, cfg.max_steps, cfg.save_formats) if acc.is_main_process else []
        eval_end = self.eval_loss()
        return LoraTrainResult(files, cfg.max_steps - start, eval_start, eval_end, time.perf_counter() - t0, self.images)


def _rows(model, mask: torch.Tensor):
    """The model for a subset of the batch: SDXL's bound added conditioning cut to the same rows."""
    from ..pipelines.sdxl import AddedCondUNet

    if isinstance(model, AddedCondUNet):
        return AddedCondUNet(model.unet, model.text_embeds[mask], model.time_ids[mask])
    return model


def train_lora(cfg: LoraTrainConfig, *, resume: str | None = None, progress: bool = True) -> LoraTrainResult:
    """Train a LoRA as the config says; `resume` = "latest" or a checkpoint folder continues a run."""
    cfg.check()
    return LoraTrainer(cfg, progress=progress).run(resume)
