"""Changing the priority of a queued task changes when it starts; older messages of the task are dropped."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from atelier.core.db import session_scope
from atelier.tasks.models import Task
from tests.api.helpers import runtime_of
from tests.conftest import AppFactory

SLOW = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 30}}


def ok(priority: int) -> dict[str, object]:
    return {"task_type": "GENERATION", "prompt": "x", "priority": priority, "config": {"script": ["ok"]}}


def test_reprioritised_tasks_start_in_the_new_order(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)
    blocker = api.create(SLOW)  # holds the only slot while the others queue
    api.wait(blocker["id"], {"EXECUTING"})
    a, b, c = (api.create(ok(5)) for _ in range(3))
    raised = api.client.put(f"/api/v1/tasks/{c['id']}", json={"priority": 9}, headers=api.headers())
    assert raised.status_code == 200 and raised.json()["priority"] == 9
    lowered = api.client.put(f"/api/v1/tasks/{a['id']}", json={"priority": 1}, headers=api.headers())
    assert lowered.status_code == 200 and lowered.json()["priority"] == 1
    assert api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers()).status_code == 200
    done = {t["id"]: api.wait(t["id"]) for t in (a, b, c)}
    assert all(t["status"] == "COMPLETED" for t in done.values())
    order = sorted(done, key=lambda tid: done[tid]["started_at"])
    assert order == [c["id"], b["id"], a["id"]]  # without dropping a's first message, a would start before b
    with session_scope(runtime_of(api).sessions) as session:
        attempts = session.scalars(select(Task.attempt).where(Task.id == uuid.UUID(a["id"]))).one()
    assert attempts == 1  # a's stale message claimed nothing


def test_priority_cannot_change_once_started(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)
    running = api.create(SLOW)
    api.wait(running["id"], {"EXECUTING"})
    response = api.client.put(f"/api/v1/tasks/{running['id']}", json={"priority": 9}, headers=api.headers())
    assert response.status_code == 409 and "PENDING" in response.json()["detail"]
    api.client.post(f"/api/v1/tasks/{running['id']}/cancel", headers=api.headers())
