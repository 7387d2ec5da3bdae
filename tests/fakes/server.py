"""Run an ASGI app (a protocol fake) on a real 127.0.0.1 port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import uvicorn


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(app: Any, port: int | None = None, *, lifespan: bool = False) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://127.0.0.1:<port>``)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on" if lifespan else "off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"fake server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class _Fake(Protocol):
    base_url: str


FakeT = TypeVar("FakeT", bound=_Fake)


@contextmanager
def serve_fake(fake: FakeT, create_app: Callable[[FakeT], Any], port: int | None = None) -> Iterator[FakeT]:
    """Serve ``create_app(fake)`` until the block ends, with ``fake.base_url`` pointing at it."""
    with serve(create_app(fake), port) as url:
        fake.base_url = url
        yield fake
