"""The side-by-side benchmark against diffusers (`latentdiff bench`): variants.py names what is measured, harness.py
measures (probes.py is its fresh-process child for peak memory), benchmarks/make_table.py (source checkout) turns raw
JSON into BENCHMARKS.md. `free_port` serves the server benchmark and the server tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
