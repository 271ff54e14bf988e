"""Shared by the server tests: a real uvicorn server on a free loopback port around tiny models."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn

from helpers import free_port
from latentdiff.server.a1111 import Limits
from latentdiff.server.app import create_app, loopback_hosts
from latentdiff.server.worker import Catalog


@dataclass
class RunningServer:
    port: int
    asgi: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker(self):
        return self.asgi.app.state.worker

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.worker.stop()


def start_server(catalog: Catalog, limits: Limits | None = None, **kw) -> RunningServer:
    """uvicorn in a thread, as `latentdiff serve` runs it; returns once it accepts connections and the model is loaded."""
    port = free_port()
    asgi = create_app(catalog, limits=limits, allowed_hosts=loopback_hosts("127.0.0.1", port), **kw)
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    worker = asgi.app.state.worker
    worker.submit(lambda: None).future.result(timeout=120)  # the preload has run
    return RunningServer(port, asgi, server, thread)
