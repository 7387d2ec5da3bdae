"""Fixtures of the SDK/CLI tests: a real API on a loopback port (module-wide) and clients bound to a tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from atelier.app import create_app
from atelier.client import Client
from atelier.core.auth import Role, mint_token
from atelier.core.migrate import upgrade
from atelier.settings import Settings
from tests.conftest import Api, make_settings, scripted_registry
from tests.fakes.server import serve

# Tenants with their own limits on the shared server (README "Limits and fairness").
CAPPED = "capped"  # one unfinished task at a time → 429 with Retry-After: 5
THROTTLED = "throttled"  # one create per rolling minute → 429 with Retry-After ≈ 60

SLOW: dict[str, Any] = {"prompt": "x", "config": {"script": ["slow"], "slow_seconds": 1.2}}
# Progress 50 is written from 0.5 s into the run until it ends: 3 s leaves a window that an event stream opened late on
# a busy machine still sees (with 1.2 s it sometimes opened after the task had finished).
PROGRESSING: dict[str, Any] = {"prompt": "x", "config": {"script": ["slow"], "slow_seconds": 3.0}}
PARKED = "parked"  # a queue no worker consumes
OK: dict[str, Any] = {"prompt": "x", "config": {"script": ["ok"]}}


@dataclass
class Live:
    """A running API: its URL and settings."""

    url: str
    settings: Settings

    def token(self, tenant: str | None = None, role: Role = Role.SERVICE) -> str:
        """A token for ``tenant`` (default: a fresh tenant, so lists start empty)."""
        return mint_token(self.settings.auth, tenant=tenant or f"t-{uuid.uuid4().hex[:12]}", role=role)

    def client(self, tenant: str | None = None, **kwargs: object) -> Client:
        """A sync client for ``tenant``."""
        return Client(self.url, self.token(tenant), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The embedded API (worker threads included) on a real port, shared by the tests of a module (tenants apart)."""
    data: Path = tmp_path_factory.mktemp("client") / "data"
    limits = {"tenants": {CAPPED: {"max_active": 1}, THROTTLED: {"rate_per_minute": 1}}}
    settings = make_settings(data, limits=limits, broker={"embedded_concurrency": 4})
    upgrade(settings.database_url)
    with serve(create_app(settings, providers=scripted_registry()), lifespan=True) as url:
        yield Live(url, settings)


@pytest.fixture(scope="session")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The embedded API in-process, behind Starlette's TestClient, without worker threads: tasks stay PENDING."""
    settings = make_settings(tmp_path_factory.mktemp("inproc") / "data", broker={"embedded_worker": False})
    upgrade(settings.database_url)
    app = Api(TestClient(create_app(settings, providers=scripted_registry())), settings)
    app.client.__enter__()
    yield app
    app.close()


class Recorder(httpx.BaseTransport):
    """A real HTTP transport that records every request and response (and can be told to misbehave)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []
        self.refuse_events = False  # answer 404 for event streams, like a server or proxy without SSE
        self.lose_next_post_answer = False  # the POST is served, then its answer is "lost" on the way back

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Forward (or not) and record."""
        self.requests.append(request)
        if self.refuse_events and request.url.path.endswith("/events"):
            self.statuses.append(404)
            return httpx.Response(404, text="no streams here", request=request)
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        if self.lose_next_post_answer and request.method == "POST":
            self.lose_next_post_answer = False
            response.read()
            response.close()
            raise httpx.ReadError("connection reset while reading the answer", request=request)
        return response

    def paths(self, method: str | None = None) -> list[str]:
        """Paths requested (of ``method``)."""
        return [r.url.path for r in self.requests if method is None or r.method == method]

    def close(self) -> None:
        """Close the real transport."""
        self.inner.close()
