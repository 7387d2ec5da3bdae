"""The API on a real socket (uvicorn) read by plain httpx clients: SSE to the terminal event, a 20-way key race."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atelier.app import create_app
from atelier.core.auth import Role, mint_token
from atelier.core.migrate import upgrade
from atelier.settings import Settings
from tests.conftest import make_settings, scripted_registry
from tests.fakes.server import serve

SLOW = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 0.5}}


def served(settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    upgrade(settings.database_url)
    token = mint_token(settings.auth, tenant="acme", role=Role.SERVICE)
    with serve(create_app(settings, providers=scripted_registry()), lifespan=True) as url:
        yield url, {"Authorization": f"Bearer {token}"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """An embedded API on a real port."""
    yield from served(make_settings(tmp_path / "data"))


def read_stream(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_sse_over_a_socket_reaches_the_terminal_event(server: tuple[str, dict[str, str]]) -> None:
    base, headers = server
    created = httpx.post(f"{base}/api/v1/tasks/", json=SLOW, headers=headers, timeout=30)
    assert created.status_code == 200, created.text
    events = read_stream(f"{base}/api/v1/tasks/{created.json()['id']}/events", headers)
    statuses = [e["status"] for e in events if e.get("event_type") == "TASK_STATUS"]
    assert statuses == ["EXECUTING", "COMPLETED"]  # the stream ended by itself after the terminal event
    assert events[0]["event_type"] == "TASK_CREATED"


def race(base: str, headers: dict[str, str], n: int = 20) -> list[httpx.Response]:
    """``n`` identical creates with one Idempotency-Key, released at once."""
    barrier = threading.Barrier(n, timeout=30)
    responses: list[httpx.Response] = []
    lock = threading.Lock()
    body = {**SLOW, "config": {"script": ["ok"]}}

    def submit() -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            response = client.post(
                f"{base}/api/v1/tasks/", json=body, headers={**headers, "Idempotency-Key": "burst-1"}
            )
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


def check_race(base: str, headers: dict[str, str]) -> None:
    responses = race(base, headers)
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(1 for r in responses if r.headers.get("Idempotent-Replayed") != "true") == 1
    listed = httpx.get(f"{base}/api/v1/tasks/?limit=100", headers=headers, timeout=30).json()
    assert len(listed) == 1


def test_twenty_concurrent_identical_creates_make_one_task(server: tuple[str, dict[str, str]]) -> None:
    check_race(*server)
