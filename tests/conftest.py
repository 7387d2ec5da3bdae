"""Shared fixtures: an isolated embedded app per test, tokens, images and polling helpers."""

from __future__ import annotations

import base64
import io
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from atelier.app import create_app
from atelier.core.auth import Role, mint_token
from atelier.core.migrate import upgrade
from atelier.providers.registry import ProviderRegistry, default_registry
from atelier.settings import Settings

PLUGIN = "tests.fakes.providers:register"

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an isolated embedded instance with fast retries."""
    values: dict[str, Any] = {
        "environment": "test",
        "data_dir": data_dir,
        "tasks": {
            "retry_backoff_seconds": 0.01,
            "retry_backoff_max_seconds": 0.05,
            "cancel_poll_seconds": 0.0,
        },
        "broker": {"embedded_concurrency": 2},
    }
    values.update(overrides)
    return Settings(**values)


def scripted_registry() -> ProviderRegistry:
    """Built-in providers plus the scripted ones."""
    return default_registry([PLUGIN])


class Api:
    """A TestClient with per-tenant/role tokens and helpers."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.closed = False

    def close(self) -> None:
        """Shut the app down (lifespan exit: worker stopped, in-memory queue gone)."""
        if not self.closed:
            self.closed = True
            self.client.__exit__(None, None, None)

    def headers(self, tenant: str = "acme", role: Role = Role.SERVICE) -> dict[str, str]:
        """Authorization header for ``tenant``/``role``."""
        return {"Authorization": f"Bearer {mint_token(self.settings.auth, tenant=tenant, role=role)}"}

    def create(self, body: dict[str, Any], tenant: str = "acme", role: Role = Role.SERVICE) -> dict[str, Any]:
        """Create a task and assert it was accepted."""
        response = self.client.post("/api/v1/tasks/", json=body, headers=self.headers(tenant, role))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def get(self, task_id: str, tenant: str = "acme") -> dict[str, Any]:
        """GET a task."""
        response = self.client.get(f"/api/v1/tasks/{task_id}", headers=self.headers(tenant))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def side_effects(self, task_id: str) -> int:
        """Completed runs of the scripted provider for ``task_id`` (markers it leaves in storage)."""
        response = self.client.get(
            f"/api/v1/storage/images?prefix=side-effects/{task_id}/&limit=1000", headers=self.headers()
        )
        assert response.status_code == 200
        count: int = response.json()["count"]
        return count

    def wait(
        self, task_id: str, statuses: set[str] | None = None, timeout: float = 20.0, tenant: str = "acme"
    ) -> dict[str, Any]:
        """Poll until the task reaches one of ``statuses`` (default: terminal)."""
        wanted = statuses or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id, tenant)
            if task["status"] in wanted:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} stuck in {task['status']}: {task['errors']}")
            time.sleep(0.01)


AppFactory = Callable[..., Api]


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per session: apps start from a copy (Alembic takes ~0.15 s)."""
    path = tmp_path_factory.mktemp("migrated") / "atelier.db"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # everything in the main file, whatever the journal mode
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def migrate_database(url: str, template: Path) -> None:
    """Bring the database at ``url`` to head: a new SQLite file is a copy of ``template``, the rest is upgraded."""
    prefix = "sqlite:///"
    target = Path(url[len(prefix) :]) if url.startswith(prefix) and ":memory:" not in url else None
    if target is not None and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, target)
    else:
        upgrade(url)


@pytest.fixture
def app_factory(tmp_path: Path, migrated_sqlite: Path) -> Iterator[AppFactory]:
    """Start embedded apps on ``tmp_path`` (migrated); all are shut down at the end of the test."""
    apps: list[Api] = []

    def start(
        worker: bool = True,
        registry: ProviderRegistry | None = None,
        concurrency: int = 2,
        migrate: bool = True,
        builtin: bool = False,
        **overrides: Any,
    ) -> Api:
        broker = {"embedded_concurrency": concurrency, "embedded_worker": worker, **overrides.pop("broker", {})}
        settings = make_settings(tmp_path / "data", broker=broker, **overrides)
        if migrate:
            migrate_database(settings.database_url, migrated_sqlite)
        if builtin:  # the real providers only, connected as ``settings`` says (no scripted fakes)
            registry = default_registry(settings.providers.plugins, settings.providers)
        client = TestClient(create_app(settings, providers=registry or scripted_registry()))
        client.__enter__()
        apps.append(Api(client, settings))
        return apps[-1]

    yield start
    for app in reversed(apps):
        app.close()


@pytest.fixture
def api(app_factory: AppFactory) -> Api:
    """An embedded app with its worker running."""
    return app_factory()


@pytest.fixture
def idle_api(app_factory: AppFactory) -> Api:
    """An embedded app without a worker: tasks stay PENDING (for pure API tests)."""
    return app_factory(worker=False)


def png_bytes(size: tuple[int, int] = (40, 20), colour: str = "white", fmt: str = "PNG") -> bytes:
    """An encoded test image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def b64_png(size: tuple[int, int] = (40, 20), colour: str = "white") -> str:
    """A base64 test image."""
    return base64.b64encode(png_bytes(size, colour)).decode()


def data_url(size: tuple[int, int] = (40, 20), colour: str = "white") -> str:
    """A data-URL test image."""
    return "data:image/png;base64," + b64_png(size, colour)
