"""Security matrix: every endpoint against hostile callers and hostile inputs (shared helpers live here).

Each test states what must be refused, with which status, and checks that nothing was written (rows, stored
files, LoRA folders) and nothing was fetched (a counting HTTP server that must see zero hits).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from atelier.app import create_app
from atelier.core.migrate import upgrade
from atelier.training.models import TrainingTask
from tests.api.helpers import runtime_of
from tests.conftest import Api, make_settings, png_bytes, scripted_registry


@dataclass(frozen=True)
class RouteInfo:
    """One (method, path template) of the app, with the endpoint that serves it."""

    method: str
    path: str
    endpoint: str


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every FastAPI route of ``app`` (included routers flattened), one entry per method.

    FastAPI ≥ 0.16x keeps included routers as nested route objects; both layouts are walked.
    """
    found: list[RouteInfo] = []

    def add(path: str, methods: set[str] | None, endpoint: Any) -> None:
        name = f"{endpoint.__module__}.{endpoint.__name__}" if endpoint is not None else "?"
        # HEAD is skipped where it is only the automatic twin of a GET.
        skip = {"OPTIONS", "HEAD"} if "GET" in (methods or ()) else {"OPTIONS"}
        found.extend(RouteInfo(m, path, name) for m in sorted(methods or ()) if m not in skip)

    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            for context in contexts():
                if isinstance(context.original_route, APIRoute):
                    add(context.path, context.methods, context.endpoint)
        elif isinstance(route, APIRoute):
            add(route.path, route.methods, route.endpoint)
    return found


def start_app(data_dir: Path, *, worker: bool = False, **overrides: Any) -> Api:
    """A migrated embedded app on ``data_dir`` (scripted providers plus the built-in ones); close it when done."""
    broker = {"embedded_concurrency": 2, "embedded_worker": worker}
    settings = make_settings(data_dir, broker=broker, **overrides)
    upgrade(settings.database_url)
    client = TestClient(create_app(settings, providers=scripted_registry()))
    client.__enter__()
    return Api(client, settings)


def training_count(api: Api) -> int:
    """Rows in the training table."""
    with runtime_of(api).sessions() as session:
        return int(session.scalar(select(func.count()).select_from(TrainingTask)) or 0)


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative, sorted); [] when it does not exist."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------------------- counting server


@dataclass
class HitServer:
    """A tiny HTTP server that counts every request; serves a PNG, redirects, or accepts webhooks.

    ``redirects`` maps a path to a Location (302 for GET, 307 for POST); ``bodies`` maps a path to what a GET
    answers; any other GET answers a small PNG and POSTs answer 204.
    """

    host: str = "127.0.0.1"
    port: int = 0
    redirects: dict[str, str] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)
    hits: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/img.png", host: str | None = None) -> str:
        """The URL of ``path`` on this server (optionally under another host name)."""
        return f"http://{host or self.host}:{self.port}{path}"

    def count(self) -> int:
        """Requests received so far."""
        with self.lock:
            return len(self.hits)

    def reset(self) -> None:
        """Forget the requests received so far."""
        with self.lock:
            self.hits.clear()


def _handler(server: HitServer) -> type[BaseHTTPRequestHandler]:
    image = png_bytes((16, 16))

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            with server.lock:
                server.hits.append((self.command, self.path))

        def do_GET(self) -> None:
            self._record()
            location = server.redirects.get(self.path)
            if location is not None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = server.bodies.get(self.path, image)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self._record()
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            location = server.redirects.get(self.path)
            self.send_response(204 if location is None else 307)
            if location is not None:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def hit_server(host: str = "127.0.0.1", **kwargs: Any) -> Iterator[HitServer]:
    """Serve a :class:`HitServer` on ``host`` (any 127.x address works on Linux) until the block ends."""
    state = HitServer(host=host, **kwargs)
    httpd = ThreadingHTTPServer((host, 0), _handler(state))
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
