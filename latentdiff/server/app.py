"""The ASGI app: A1111's `/sdapi/v1` routes, the page at `/`, and the guards (auth, Host check, body size)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import PngImagePlugin

from ..errors import LatentDiffError
from ..pipelines.png_metadata import JSON_KEY
from .a1111 import (Img2ImgRequest, Limits, OptionsUpdate, PngInfoRequest, Txt2ImgRequest, decode_image, parse_parameters,
                    samplers_list, schedulers_list, to_job)
from .worker import Catalog, Worker

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def error(status: int, detail: str) -> JSONResponse:
    """A1111's error body shape, with a one-line reason."""
    return JSONResponse({"error": "HTTPException" if status < 500 else "RuntimeError", "detail": detail, "body": "",
                         "errors": detail}, status_code=status)


def png_b64(image, params) -> str:
    """A generated image as a base64 PNG carrying A1111's `parameters` chunk and our JSON chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", params.to_a1111())
    info.add_itxt(JSON_KEY, params.to_json())
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode()


class Guard:
    """Pure-ASGI middleware: request-size limit, Host-header check (DNS rebinding) and HTTP basic auth."""

    def __init__(self, app, *, limits: Limits, allowed_hosts: set[str] | None, auth: tuple[str, str] | None):
        self.app, self.limits, self.allowed_hosts, self.auth = app, limits, allowed_hosts, auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        reason = self._reject(headers)
        if reason:
            status, detail = reason
            extra = {"WWW-Authenticate": 'Basic realm="latentdiff"'} if status == 401 else None
            resp = error(status, detail)
            if extra:
                resp.headers.update(extra)
            return await resp(scope, receive, send)
        limit, seen = self.limits.max_body, 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await error(413, f"request body over the limit of {limit} bytes")(scope, receive, send)

    def _reject(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request must not reach the app."""
        if self.allowed_hosts is not None and headers.get("host", "").lower() not in self.allowed_hosts:
            return 400, f"Host header {headers.get('host', '')!r} is not this server's (DNS rebinding guard)"
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limits.max_body:
            return 413, f"request body of {length} bytes is over the limit of {self.limits.max_body}"
        if self.auth is not None:
            got = headers.get("authorization", "")
            try:
                user, _, pw = base64.b64decode(got[6:]).decode().partition(":") if got[:6].lower() == "basic " else ("", "", "")
            except (binascii.Error, UnicodeDecodeError):
                user, pw = "", ""
            if not (secrets.compare_digest(user, self.auth[0]) & secrets.compare_digest(pw, self.auth[1])):
                return 401, "authentication required (HTTP basic, --api-auth)"
        return None


class ClientGone(Exception):
    """The client hung up while its job waited or ran."""


class BodyTooLarge(Exception):
    """The streamed body passed Limits.max_body."""


def loopback_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a loopback-bound server accepts; None (no check) when bound elsewhere."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return {f"{h}:{port}" for h in LOOPBACK_NAMES} | set(LOOPBACK_NAMES)


def create_app(catalog: Catalog, *, limits: Limits | None = None, allowed_hosts: set[str] | None = None,
               auth: tuple[str, str] | None = None, device=None, dtype=None, preload: bool = True) -> "Guard":
    """The ASGI app: FastAPI around one Worker, behind the Guard; `.app.state.worker` for tests and the CLI."""
    limits = limits or Limits()
    worker = Worker(catalog, device=device, dtype=dtype)
    app = FastAPI(title="latentdiff", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.limits, app.state.options = worker, limits, {}
    if preload and catalog.first:
        worker.submit(lambda: worker.load(catalog.first), "load")

    @app.exception_handler(RequestValidationError)
    async def invalid(_req, exc: RequestValidationError):
        e = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        return error(422, f"{where}: {e.get('msg', 'invalid request')}")

    @app.exception_handler(ClientGone)
    async def gone(_req, _exc):
        return error(499, "client closed the connection")  # nobody reads it; keeps tracebacks out of the log

    @app.exception_handler(Exception)
    async def failure(_req, exc: Exception):
        return error(500, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'internal error'}")

    @app.exception_handler(LatentDiffError)
    async def user_error(_req, exc: LatentDiffError):
        return error(422, str(exc).splitlines()[0] if str(exc) else "invalid request")

    async def run(request: Request, fn, name: str):
        """Queue fn on the worker and wait; a client that goes away cancels its job (queued or running)."""
        task = worker.submit(fn, name)
        fut = asyncio.wrap_future(task.future)
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.25)
            if done:
                return fut.result()
            if await request.is_disconnected():
                worker.cancel(task)
                raise ClientGone()

    async def generate(request: Request, req: Txt2ImgRequest, name: str) -> dict:
        job = to_job(req, limits)
        if job.model:
            catalog.find_model(job.model)
        for n in job.loras:
            catalog.find_lora(n)
        t0 = time.perf_counter()
        out, pipe, interrupted = await run(request, lambda: worker.generate(job), name)
        params = out.params
        first = params[0] if params else None
        info = {"prompt": req.prompt, "all_prompts": [req.prompt] * len(params), "negative_prompt": job.negative_prompt,
                "all_negative_prompts": [p.negative_prompt for p in params], "seed": job.seed,
                "all_seeds": [p.seed for p in params], "subseed": -1, "all_subseeds": [-1] * len(params),
                "subseed_strength": 0, "width": first.width if first else job.width, "height": first.height if first else job.height,
                "sampler_name": _display(first.sampler) if first else None, "cfg_scale": first.guidance_scale if first else None,
                "steps": first.steps if first else None, "batch_size": job.batch_size, "restore_faces": False,
                "sd_model_name": pipe.model_name, "sd_model_hash": pipe.model_hash or None,
                "denoising_strength": job.strength if job.mode != "txt2img" else 0, "clip_skip": 1,
                "extra_generation_params": dict(first.extra) if first else {}, "index_of_first_image": 0,
                "infotexts": [p.to_a1111() for p in params], "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
                "interrupted": interrupted,
                "ignored": job.ignored, "seconds": round(time.perf_counter() - t0, 3), "version": "latentdiff"}
        images = [png_b64(im, p) for im, p in zip(out.images, params)] if req.send_images else []
        body = req.model_dump(exclude={"init_images", "mask"})
        return {"images": images, "parameters": body, "info": json.dumps(info)}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request, req: Txt2ImgRequest):
        return await generate(request, req, "txt2img")

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request, req: Img2ImgRequest):
        return await generate(request, req, "img2img")

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        p = worker.progress
        frac = p.fraction
        elapsed = time.time() - p.started if p.started else 0.0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        image = None
        preview = worker.preview()
        if not skip_current_image and p.latents is not None and preview is not None:
            image = preview.base64_png(p.latents)
        return {"progress": frac, "eta_relative": eta, "current_image": image, "textinfo": None,
                "state": {"skipped": False, "interrupted": p.interrupted, "job": p.job, "job_count": worker.pending,
                          "job_timestamp": p.job_timestamp, "job_no": 0, "sampling_step": p.sampling_step,
                          "sampling_steps": p.sampling_steps}}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        worker.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    async def skip():
        worker.interrupt()
        return {}

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        return [{"title": m.title, "model_name": m.name, "hash": None, "sha256": None, "filename": m.path.name, "config": None}
                for m in catalog.models.values()]

    @app.post("/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints():
        catalog.refresh()
        return {}

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras():
        catalog.refresh()
        return {}

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        return samplers_list()

    @app.get("/sdapi/v1/schedulers")
    async def schedulers():
        return schedulers_list()

    @app.get("/sdapi/v1/loras")
    async def loras():
        return [{"name": n, "alias": n, "path": p.name, "metadata": {}} for n, p in catalog.loras.items()]

    @app.get("/controlnet/model_list")  # sd-webui-controlnet's API
    async def controlnet_models():
        return {"model_list": list(catalog.controlnets)}

    @app.get("/controlnet/module_list")
    async def controlnet_modules():
        from .controlnet import MODULES

        return {"module_list": sorted(set(MODULES.values()))}

    @app.get("/sdapi/v1/embeddings")
    async def embeddings():
        """A1111's listing: the embeddings of --embeddings-dir that fit the current model's text encoder, and the rest."""
        entry = worker.pipes.get(worker.current or "") if worker.current else None
        width = entry[0].text_encoder.config.hidden_size if entry else None
        out: dict = {"loaded": {}, "skipped": {}}
        for name, e in catalog.embeddings.items():
            fits = e.for_encoder(width) is not None if width else "" in e.vectors
            shape = next(iter(e.vectors.values())).shape
            out["loaded" if fits else "skipped"][name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                          "shape": int(shape[-1]), "vectors": int(shape[0])}
        return out

    @app.post("/sdapi/v1/refresh-embeddings")
    async def refresh_embeddings():
        catalog.refresh()
        for pipe, _ in worker.pipes.values():
            pipe.embeddings.clear()
            pipe.embeddings.update(catalog.embeddings)
        return {}

    @app.get("/sdapi/v1/scripts")
    async def scripts():
        # ControlNet units are honoured (server/controlnet.py). Clients such as webuiapi look for "controlnet m2m" here and
        # then send `{"args": []}` when a call has no units; without it they resend the units of an earlier call.
        names = ["controlnet", "controlnet m2m"]
        return {"txt2img": names, "img2img": names}

    @app.get("/sdapi/v1/options")
    async def get_options():
        current = worker.current or catalog.first
        return {**app.state.options, "sd_model_checkpoint": current, "sd_checkpoint_hash": None, "samples_format": "png",
                "CLIP_stop_at_last_layers": 1}

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request, req: OptionsUpdate):
        if req.sd_model_checkpoint:
            name = catalog.find_model(req.sd_model_checkpoint).name
            await run(request, lambda: worker.load(name), "load")
        app.state.options.update(req.model_extra or {})
        return None

    @app.post("/sdapi/v1/png-info")
    async def png_info(req: PngInfoRequest):
        im = decode_image(req.image, "image", limits)
        items = {k: v for k, v in (getattr(im, "text", None) or im.info).items() if isinstance(v, str)}
        text = items.pop("parameters", "")
        return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return Guard(app, limits=limits, allowed_hosts=allowed_hosts, auth=auth)


def _display(name: str) -> str:
    from ..pipelines.samplers import display_name

    return display_name(name)
