"""Per-tenant rate limits and caps (429 + Retry-After, nothing written) and the queue position/ETA read model."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import update

import atelier.tasks.queue as queue
from atelier.core.db import session_scope
from atelier.core.time import utcnow
from atelier.tasks.models import Task
from tests.api.helpers import runtime_of, task_count
from tests.conftest import Api, AppFactory

GENERATE = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}}


def post(api: Api, tenant: str = "acme", **extra: object) -> httpx.Response:
    response: httpx.Response = api.client.post(
        "/api/v1/tasks/", json={**GENERATE, **extra}, headers=api.headers(tenant)
    )
    return response


def test_rate_limit_answers_429_with_retry_after_and_writes_nothing(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, limits={"rate_per_minute": 3, "tenants": {"globex": {"rate_per_minute": 1}}})
    for _ in range(3):
        assert post(api).status_code == 200
    before = task_count(api)
    refused = post(api)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    body = refused.json()
    assert body["code"] == "rate_limited" and "3 tasks in the last minute" in body["detail"]
    assert task_count(api) == before
    assert post(api, "globex").status_code == 200  # its own budget
    assert post(api, "globex").status_code == 429  # its override: 1 per minute
    with session_scope(runtime_of(api).sessions) as session:  # a minute later the window has moved on
        session.execute(update(Task).where(Task.tenant_id == "acme").values(created_at=utcnow() - timedelta(minutes=2)))
    assert post(api).status_code == 200


def test_cap_on_unfinished_tasks(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, limits={"max_active": 2})
    first = post(api).json()
    assert post(api).status_code == 200
    refused = post(api)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert "2 unfinished tasks" in refused.json()["detail"]
    assert api.client.post(f"/api/v1/tasks/{first['id']}/cancel", headers=api.headers()).status_code == 200
    assert post(api).status_code == 200  # a finished task frees a slot


def test_workflow_steps_are_not_rate_limited(app_factory: AppFactory) -> None:
    api = app_factory(limits={"rate_per_minute": 1})
    steps = [
        {"id": s, "task_type": "GENERATION", "config": {"prompt": s, "config": {"script": ["ok"]}}, "depends_on": d}
        for s, d in (("a", []), ("b", ["a"]), ("c", ["b"]))
    ]
    body = {"name": "w", "origin_instance": "t", "steps": steps}
    created = api.client.post("/api/v1/workflows/", json=body, headers=api.headers())
    assert created.status_code == 200, created.text
    for _ in range(200):
        workflow = api.client.get(f"/api/v1/workflows/{created.json()['id']}", headers=api.headers()).json()
        if workflow["status"] != "RUNNING":
            break
        time.sleep(0.05)
    assert workflow["status"] == "COMPLETED", workflow


def test_queue_position_and_eta_while_pending(app_factory: AppFactory) -> None:
    api = app_factory(worker=False)
    low = [post(api).json() for _ in range(3)]
    urgent = post(api, priority=5).json()
    other_queue = post(api, queue_name="bulk").json()
    positions = [api.get(t["id"])["queue_position"] for t in (urgent, *low)]
    assert positions == [0, 1, 2, 3]
    assert api.get(other_queue["id"])["queue_position"] == 0
    assert api.get(low[0]["id"])["eta_seconds"] is None  # no finished task of this queue yet: no estimate
    now = utcnow()
    done = [uuid.UUID(post(api).json()["id"]) for _ in range(2)]
    with session_scope(runtime_of(api).sessions) as session:  # two finished runs of 2 s each
        session.execute(
            update(Task)
            .where(Task.id.in_(done))
            .values(status="COMPLETED", started_at=now - timedelta(seconds=2), completed_at=now)
        )
    queue._cache.clear()  # the queue's run-time statistics are cached for a few seconds
    third = api.get(low[2]["id"])
    assert third["queue_position"] == 3 and third["eta_seconds"] == 8.0  # (3 ahead / 1 running + 1) × 2 s
    listed = api.client.get("/api/v1/tasks/", headers=api.headers()).json()
    assert all(t["queue_position"] is None for t in listed)  # single reads only
    finished = api.get(str(done[0]))
    assert finished["queue_position"] is None and finished["eta_seconds"] is None
