"""Helpers for remote-provider tests: an app whose real providers talk to local protocol fakes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from atelier.core.db import session_scope
from atelier.core.time import utcnow
from atelier.tasks.models import Task
from tests.api.helpers import runtime_of
from tests.conftest import Api, AppFactory
from tests.fakes.fal import FalFake, create_fal_app
from tests.fakes.server import serve_fake

FALLBACK_PLUGIN = "tests.fakes.providers:register_fallback"
FAL_KEY = "fal-test-key"


@pytest.fixture
def fal() -> Iterator[FalFake]:
    """The fal queue fake on a real port (a provider under test, or the fallback of another one)."""
    with serve_fake(FalFake(key=FAL_KEY), create_fal_app) as fake:
        yield fake


def service(base_url: str, key: str | None = None, **extra: Any) -> dict[str, Any]:
    """Connection settings of one remote service pointed at a fake, with fast polling."""
    values: dict[str, Any] = {
        "base_url": base_url,
        "poll_interval_seconds": 0.02,
        "max_wait_seconds": 30,
        "max_retry_after_seconds": 5,
        "timeout_seconds": 10,
    }
    if key is not None:
        values["api_key"] = key
    values.update(extra)
    return values


def remote_api(app_factory: AppFactory, max_retries: int = 2, plugins: list[str] | None = None, **services: Any) -> Api:
    """An embedded app with the built-in providers, the given services and 127.0.0.1 allowed."""
    providers: dict[str, Any] = {"plugins": plugins or []}
    for name, value in services.items():
        providers[name] = value
    return app_factory(
        builtin=True,
        providers=providers,
        inputs={"allow_private_networks": ["127.0.0.1"]},
        tasks={
            "max_retries": max_retries,
            "retry_backoff_seconds": 0.01,
            "retry_backoff_max_seconds": 0.05,
            "cancel_poll_seconds": 0.0,
        },
    )


def task_row(api: Api, task_id: str) -> Task:
    """The task row as stored (fields the API does not show, e.g. lease owner)."""
    with session_scope(runtime_of(api).sessions) as session:
        task = session.scalars(select(Task).where(Task.id == uuid.UUID(task_id))).one()
        session.expunge(task)
        return task


def until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for ``condition`` to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def steal_lease(api: Api, task_id: str) -> None:
    """What a worker's death leaves behind: the running attempt loses its lease, which then expires."""
    with session_scope(runtime_of(api).sessions) as session:
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(task_id))
            .values(lease_owner="dead-worker", lease_expires_at=utcnow())
        )


def cancel(api: Api, task_id: str) -> dict[str, Any]:
    """POST the cancel endpoint."""
    response = api.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=api.headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def storage_bytes(api: Api, path: str) -> bytes:
    """A stored file's bytes, through the API."""
    response = api.client.get(f"/api/v1/storage/images/{path}", headers=api.headers())
    assert response.status_code == 200, response.text
    data: bytes = response.content
    return data
