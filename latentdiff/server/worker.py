"""One worker thread owns the warm pipeline(s); a FIFO queue in front of it; progress and interrupt for the API."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import LatentDiffError
from .a1111 import Job
from .preview import LatentPreview, fit_preview

log = logging.getLogger("latentdiff.server")


@dataclass
class ModelEntry:
    """A model the clients may name: a diffusers folder or a .safetensors file from the configured places."""

    name: str
    path: Path

    @property
    def title(self) -> str:
        return self.name


class Catalog:
    """The models and LoRAs clients can name, scanned from the configured folders only (no paths from clients)."""

    def __init__(self, model: str | None = None, models_dir: str | None = None, lora_dir: str | None = None,
                 default_path: str | None = None, controlnet_dir: str | None = None, embeddings_dir: str | None = None):
        self.model, self.models_dir, self.lora_dir, self.default_path = model, models_dir, lora_dir, default_path
        self.controlnet_dir, self.embeddings_dir = controlnet_dir, embeddings_dir
        self.controlnets: dict[str, Path] = {}
        self.models: dict[str, ModelEntry] = {}
        self.loras: dict[str, Path] = {}
        self.embeddings: dict = {}  # name → checkpoints.embeddings.Embedding, used by name in prompts
        self.first: str | None = None
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folders (POST /sdapi/v1/refresh-checkpoints, /refresh-loras)."""
        models: dict[str, ModelEntry] = {}
        if self.default_path:
            models["default"] = ModelEntry("default", Path(self.default_path))
        if self.model:
            p = Path(self.model)
            name = p.stem if p.is_file() else p.name
            models[name] = ModelEntry(name, p)
        if self.models_dir:
            for p in sorted(Path(self.models_dir).iterdir()):
                if p.is_dir() and (p / "model_index.json").is_file():
                    models.setdefault(p.name, ModelEntry(p.name, p))
                elif p.is_file() and p.suffix == ".safetensors":  # pickles (.ckpt) are never offered
                    models.setdefault(p.stem, ModelEntry(p.stem, p))
        self.models = models
        first = (Path(self.model).stem if Path(self.model).is_file() else Path(self.model).name) if self.model else None
        self.first = first or next(iter(models), None)
        loras: dict[str, Path] = {}
        if self.lora_dir:
            for p in sorted(Path(self.lora_dir).rglob("*.safetensors")):
                loras.setdefault(p.stem, p)
        self.loras = loras
        controlnets: dict[str, Path] = {}  # diffusers ControlNet folders and .safetensors files (never pickles)
        for p in sorted(Path(self.controlnet_dir).iterdir()) if self.controlnet_dir else []:
            if (p.is_dir() and (p / "config.json").is_file()) or p.suffix == ".safetensors":
                controlnets.setdefault(p.stem if p.is_file() else p.name, p)
        self.controlnets = controlnets
        if self.embeddings_dir:  # .safetensors only: a client never makes the server unpickle
            from ..checkpoints.embeddings import read_embeddings

            self.embeddings = read_embeddings(self.embeddings_dir)

    def find_model(self, name: str) -> ModelEntry:
        """A model by its name or A1111 title ("name [hash]", "name.safetensors"); one-line error otherwise."""
        key = name.split(" [")[0].strip()
        key = key[: -len(".safetensors")] if key.endswith(".safetensors") else key
        if key not in self.models:
            raise LatentDiffError(f"unknown model {name!r}; available: {', '.join(self.models) or 'none'}")
        return self.models[key]

    def find_controlnet(self, name: str) -> Path:
        """A ControlNet by its name or sd-webui-controlnet title ("name [hash]"); one-line error otherwise."""
        key = name.split(" [")[0].strip()
        if key not in self.controlnets:
            raise LatentDiffError(f"unknown ControlNet {name!r}; available: {', '.join(self.controlnets) or 'none'}")
        return self.controlnets[key]

    def find_lora(self, name: str) -> Path:
        if name not in self.loras:
            raise LatentDiffError(f"unknown LoRA {name!r}; available: {', '.join(self.loras) or 'none'}")
        return self.loras[name]


@dataclass
class Progress:
    """What GET /sdapi/v1/progress reports about the running job."""

    job: str = ""
    job_id: int = 0
    job_timestamp: str = "0"
    started: float = 0.0
    sampling_step: int = 0
    sampling_steps: int = 0
    batch_no: int = 0
    n_iter: int = 0
    latents: torch.Tensor | None = None    # (C, h, w) of the batch's first image at the latest step
    interrupted: bool = False

    @property
    def fraction(self) -> float:
        if not self.n_iter or not self.sampling_steps:
            return 0.0
        return min(1.0, (self.batch_no + self.sampling_step / self.sampling_steps) / self.n_iter)


@dataclass
class Task:
    """A queued call into the worker thread."""

    fn: Callable
    future: Future
    job_id: int
    name: str
    cancelled: bool = field(default=False)


class Worker:
    """The single thread that runs pipelines; everything touching a model goes through its FIFO queue."""

    def __init__(self, catalog: Catalog, *, device=None, dtype=None, cache: int = 2, fit_previews: bool = True):
        self.catalog, self.device, self.dtype, self.cache_size = catalog, device, dtype, cache
        self.fit_previews = fit_previews
        self.pipes: OrderedDict[str, tuple] = OrderedDict()   # name → (pipeline, LatentPreview | None), LRU order
        self.current: str | None = None                        # the model GET /options reports
        self.queue: queue.Queue[Task | None] = queue.Queue()
        self.progress = Progress()
        self.pending = 0
        self.cancelled = 0     # jobs whose client went away (dropped from the queue or stopped mid-sampling)
        self._lock = threading.Lock()
        self._ids = 0
        self.thread = threading.Thread(target=self._run, name="latentdiff-worker", daemon=True)
        self.thread.start()

    # -- queue ------------------------------------------------------------------------------------------------------
    def submit(self, fn: Callable, name: str = "") -> Task:
        """Queue `fn()` to run on the worker thread; the task's future carries its result or exception."""
        with self._lock:
            self._ids += 1
            task = Task(fn, Future(), self._ids, name)
            self.pending += 1
        self.queue.put(task)
        return task

    def cancel(self, task: Task) -> None:
        """Drop a queued task, or stop a running one at its next sampler step (its client went away)."""
        task.cancelled = True
        self.cancelled += 1
        if self.progress.job_id == task.job_id:
            self.progress.interrupted = True

    def interrupt(self) -> None:
        """POST /sdapi/v1/interrupt: the running job stops at its next step and returns what it has."""
        if self.progress.job_id:
            self.progress.interrupted = True

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                return
            try:
                if task.cancelled or not task.future.set_running_or_notify_cancel():
                    continue
                self.progress = Progress(job=task.name, job_id=task.job_id, job_timestamp=time.strftime("%Y%m%d%H%M%S"),
                                         started=time.time())
                try:
                    task.future.set_result(task.fn())
                except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                    task.future.set_exception(e)
            finally:
                with self._lock:
                    self.pending -= 1
                self.progress = Progress()

    # -- models (worker thread only) --------------------------------------------------------------------------------
    def pipe(self, name: str | None = None):
        """The named pipeline (loaded on first use, LRU cache of `cache` models), or the current one."""
        from ..pipelines import LatentDiffusionPipeline

        name = self.catalog.find_model(name).name if name else (self.current or self.catalog.first)
        if name is None:
            raise LatentDiffError("no model is configured; start the server with --model or --models-dir")
        if name not in self.pipes:
            entry = self.catalog.find_model(name)
            while len(self.pipes) >= self.cache_size:
                self.pipes.popitem(last=False)
            t0 = time.perf_counter()
            pipe = LatentDiffusionPipeline.from_pretrained(entry.path, device=self.device, dtype=self.dtype)
            pipe.model_name = entry.name
            pipe.embeddings.update(self.catalog.embeddings)
            preview = fit_preview(pipe) if self.fit_previews else None
            self.pipes[name] = (pipe, preview)
            log.info("loaded %s in %.1f s", name, time.perf_counter() - t0)
        self.pipes.move_to_end(name)
        return self.pipes[name]

    def load(self, name: str) -> str:
        """Make `name` the current model (POST /options sd_model_checkpoint)."""
        self.pipe(name)
        self.current = self.catalog.find_model(name).name
        return self.current

    def preview(self) -> LatentPreview | None:
        entry = self.pipes.get(self.current or "") if self.current else None
        return entry[1] if entry else None

    def generate(self, job: Job):
        """Run one A1111 job: n_iter batches of batch_size images, seeds seed + n·batch_size + i, as A1111."""
        from ..pipelines.base import PipelineOutput

        pipe, preview = self.pipe(job.model)
        self._set_loras(pipe, job.loras)
        steps, _, _ = pipe.sampling_settings(job.steps, job.cfg_scale, job.sampler)
        p = self.progress
        p.n_iter, p.sampling_steps = job.n_iter, steps
        if job.mode != "txt2img":  # img2img runs int(steps · strength) steps
            p.sampling_steps = max(1, min(steps, int(steps * job.strength)))
        out = PipelineOutput([], [])
        controls = self._controls(job)  # loaded once for every batch of the job
        for n in range(job.n_iter):
            if p.interrupted:
                break
            p.batch_no, p.sampling_step = n, 0
            kw = dict(num_inference_steps=job.steps, guidance_scale=job.cfg_scale, sampler=job.sampler, num_images=job.batch_size,
                      seed=job.seed + n * job.batch_size, width=job.width, height=job.height, progress=False,
                      callback=self._step, controls=controls)
            if job.mode == "txt2img" and job.hires is not None:
                from ..pipelines.hires import hires_fix

                r = hires_fix(pipe, job.prompt, job.negative_prompt, hires=job.hires, **kw)
            elif job.mode == "txt2img":
                r = pipe(job.prompt, job.negative_prompt, **kw)
            elif job.mode == "img2img":
                r = pipe.img2img(job.prompt, job.init_image, job.negative_prompt, strength=job.strength, **kw)
            else:
                r = pipe.inpaint(job.prompt, job.init_image, job.mask, job.negative_prompt, strength=job.strength,
                                 mask_blur=job.mask_blur, **kw)
            out.images += r.images
            out.params += r.params
        return out, pipe, p.interrupted

    def _step(self, step: int, total: int, latents: torch.Tensor) -> bool:
        """Pipeline callback: record progress and the preview latents; True (stop) once interrupted."""
        p = self.progress
        p.sampling_step, p.sampling_steps, p.latents = step, total, latents[0].detach()
        return p.interrupted

    def _controls(self, job: Job) -> list:
        """The job's ControlNet units with their files from the catalog (pipelines.control.ControlUnit)."""
        from ..pipelines.control import ControlUnit

        return [ControlUnit(self.catalog.find_controlnet(u.model), u.image, u.weight, u.start, u.end, u.module, u.resize_mode,
                            u.guess_mode, u.low, u.high) for u in job.controls]

    def _set_loras(self, pipe, loras: dict[str, float]) -> None:
        """Attach the named LoRAs from the LoRA folder (once per model) and run exactly these weights."""
        for name in loras:
            path = self.catalog.find_lora(name)
            if getattr(pipe, "_loras", None) is None or name not in pipe.loras.adapters:
                pipe.load_lora(path, name=name)
        if loras or getattr(pipe, "_loras", None) is not None:
            pipe.set_loras(loras)
