"""The data side of LoRA training: images (and regularisation images) in aspect buckets, the frozen encoders' outputs
cached once (VAE latent moments per image and flip, CLIP embeddings per caption), and each micro-batch's latents and
text context. Every draw of micro-batch m depends on (seed, m) only, so a resumed run sees the same data."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..data.dataset import BucketBatchSampler, ImageCaptionDataset, make_buckets
from ..errors import LatentDiffError
from .cache import TensorCache, module_fingerprint

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



class LoraData:
    """The training items of a LoRA run, their batches, and the cached frozen-encoder outputs."""

    def __init__(self, cfg, acc, *, vae, text_encoder, tokenizer, weight_dtype: torch.dtype, native: int, out: Path,
                 progress: bool = True, text_encoder_2=None, tokenizer_2=None, aesthetic: bool = False):
        """SDXL: `text_encoder_2`/`tokenizer_2` (bigG) given; `aesthetic` for the refiner's 5-number time ids."""
        self.cfg, self.acc, self.progress = cfg, acc, progress
        self.vae, self.text_encoder, self.tokenizer, self.weight_dtype, self.native = vae, text_encoder, tokenizer, weight_dtype, native
        self.text_encoder_2, self.tokenizer_2, self.aesthetic = text_encoder_2, tokenizer_2, aesthetic
        self.sdxl = text_encoder_2 is not None
        self.out = out
        self._load_data()

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
        self.unpark_encoders()
        with self.acc.main_process_first():
            if cfg.cache_latents:
                self._cache_latents()
            if cfg.cache_text and not cfg.train_text_encoder:
                self._cache_text()
        self.park_encoders()

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

    def park_encoders(self) -> None:
        """Once their outputs are cached, the frozen VAE / text encoder leave the GPU (validation borrows them back)."""
        if self.acc.device.type != "cuda":
            return
        if self.latents is not None:
            self.vae.to("cpu")
        if self.text is not None:
            for enc in self.encoders:
                enc.to("cpu")
        torch.cuda.empty_cache()

    def unpark_encoders(self) -> None:
        self.vae.to(self.acc.device)
        for enc in self.encoders:
            enc.to(self.acc.device)

    @property
    def encoders(self) -> list:
        """The frozen text encoders: CLIP (SD1/SD2), CLIP-L and bigG (SDXL base), bigG alone (SDXL refiner)."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    def _cache_text(self) -> None:
        """CLIP embeddings (77, D) of every caption and of the empty caption, computed once; SDXL: context and pooled."""
        fp = "|".join(module_fingerprint(e, {"dtype": str(e.dtype)}) for e in self.encoders)
        self.text = TensorCache(self.cache_dir / "text.safetensors", fp)
        captions = ["", *dict.fromkeys(it.caption for it in self.items)]
        if not self.sdxl:
            self.text.fill(captions, lambda batch: list(self.encode_text(batch)), batch_size=32, desc="cache captions",
                           progress=self.progress)
            return

        def compute(batch: list[str]) -> list[torch.Tensor]:  # keys "context|caption" and "pooled|caption"
            texts = list(dict.fromkeys(k.split("|", 1)[1] for k in batch))
            context, pooled = self.encode_sdxl_text(texts)  # (n, 77, D1+D2), (n, P)
            got = {t: {"context": c, "pooled": p} for t, c, p in zip(texts, context, pooled)}
            return [got[k.split("|", 1)[1]][k.split("|", 1)[0]] for k in batch]

        keys = [f"{part}|{c}" for c in captions for part in ("context", "pooled")]
        self.text.fill(keys, compute, batch_size=64, desc="cache captions", progress=self.progress)

    def encode_sdxl_text(self, captions: list[str], trained_encoders: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → SDXL's (context (B, 77, D1+D2), pooled (B, P)): both encoders' penultimate states concatenated and
        bigG's pooled projection (models.sdxl_text.encode_sdxl); over 75 tokens cut, as for SD1/SD2. With
        `trained_encoders` (the same encoders, being trained) gradients flow through them."""
        from ..models.sdxl_text import encode_sdxl_trainable

        tokenizers = [t for t, e in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)) if e is not None]
        with torch.set_grad_enabled(trained_encoders is not None and torch.is_grad_enabled()):
            return encode_sdxl_trainable(tokenizers, trained_encoders or self.encoders, captions)  # (B, 77, D), (B, P)

    def sdxl_context(self, captions: list[str], trained_encoders: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, 77, D1+D2), pooled (B, P)) in the weight dtype: cached, or encoded now (with gradients through
        `trained_encoders` when given)."""
        if self.text is not None:
            context = torch.stack([self.text[f"context|{c}"] for c in captions])
            pooled = torch.stack([self.text[f"pooled|{c}"] for c in captions])
        else:
            context, pooled = self.encode_sdxl_text(captions, trained_encoders)
        return context.to(self.acc.device, self.weight_dtype), pooled.to(self.acc.device, self.weight_dtype)

    def time_ids(self, items: list[Item]) -> torch.Tensor:
        """SDXL micro-conditioning per image (B, 6) as the pipeline computes it: original = target = the training size
        (its bucket), crop (0, 0); the refiner's 5 numbers end with the aesthetic score."""
        from ..models.sdxl_text import MicroConditioning

        rows = []
        for it in items:
            w, h = it.size  # (width, height) → SDXL's (height, width)
            rows.append(MicroConditioning(original_size=(h, w), target_size=(h, w)).time_ids(h, w, self.aesthetic)[1])
        return torch.tensor(rows, device=self.acc.device, dtype=self.weight_dtype)  # (B, 6 or 5)

    def encode_text(self, captions: list[str], encoder=None) -> torch.Tensor:
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

    def micro_batch(self, micro: int) -> list[Item]:
        epoch, pos = divmod(micro, self.batches_per_epoch)
        return [self.items[i] for i in self._epoch_batches(epoch)[pos]]

    def latents_of(self, items: list[Item], flips: list[bool], g: torch.Generator, epoch: int) -> torch.Tensor:
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

    def context(self, captions: list[str], trained_encoder=None) -> torch.Tensor:
        """(B, 77, D) text context: cached, or encoded now (with gradients through `trained_encoder` when given)."""
        if self.text is not None:
            return torch.stack([self.text[c] for c in captions]).to(self.acc.device, self.weight_dtype)  # (B, 77, D)
        if trained_encoder is not None:
            return self.encode_text(captions, trained_encoder)
        with torch.no_grad():
            return self.encode_text(captions)
