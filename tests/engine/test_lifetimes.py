"""Queue-wait deadlines, run timeouts and retention, through the embedded engine and the reaper."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from atelier.core.db import session_scope
from atelier.engine.reaper import sweep
from atelier.tasks import lifetimes
from atelier.tasks.models import Task
from tests.api.helpers import runtime_of
from tests.conftest import Api, AppFactory

SLOW = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 30}}


def generate(**config: Any) -> dict[str, Any]:
    return {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"], **config}}


def row(api: Api, task_id: str) -> Task:
    with session_scope(runtime_of(api).sessions) as session:
        task = session.scalars(select(Task).where(Task.id == uuid.UUID(task_id))).one()
        session.expunge(task)
        return task


def test_a_task_that_waits_past_its_queue_deadline_is_cancelled_not_run(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)
    blocker = api.create(SLOW)
    api.wait(blocker["id"], {"EXECUTING"})
    late = api.create(generate(queue_timeout_seconds=0.2))
    assert late["queue_deadline_at"] is not None
    time.sleep(0.4)
    api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers())
    task = api.wait(late["id"])  # its message came up after the deadline: refused by the claim, cancelled at once
    assert task["status"] == "CANCELLED" and task["error_category"] == "QUEUE_TIMEOUT"
    assert task["started_at"] is None and "queue-wait deadline" in task["errors"][-1]
    assert api.side_effects(late["id"]) == 0 and row(api, late["id"]).attempt == 0


def test_the_reaper_cancels_overdue_tasks_whose_message_never_comes(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, tasks={"queue_timeout_seconds": 0.1})
    waiting = api.create(generate())
    patient = api.create(generate(queue_timeout_seconds=60))  # its own deadline wins over the setting
    time.sleep(0.2)
    report = sweep(runtime_of(api))
    assert report.queue_timeouts == 1
    assert api.get(waiting["id"])["error_category"] == "QUEUE_TIMEOUT"
    assert api.get(patient["id"])["status"] == "PENDING"


@pytest.mark.parametrize("value", [0, -1, "soon", True])
def test_bad_timeouts_are_refused(app_factory: AppFactory, value: Any) -> None:
    api = app_factory(worker=False)
    for key in ("queue_timeout_seconds", "run_timeout_seconds"):
        response = api.client.post("/api/v1/tasks/", json=generate(**{key: value}), headers=api.headers())
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "config", key]


def test_an_attempt_past_its_run_timeout_fails_with_timeout(api: Api) -> None:
    task = api.create({**SLOW, "config": {"script": ["slow"], "slow_seconds": 20, "run_timeout_seconds": 0.3}})
    done = api.wait(task["id"], timeout=10)
    assert done["status"] == "FAILED" and done["error_category"] == "TIMEOUT"
    assert done["retry_count"] == 0 and "run timeout of 0.3 s" in done["errors"][-1]


def test_a_provider_that_never_checks_is_failed_by_the_reaper(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifetimes, "OVERRUN_GRACE_SECONDS", 0.0)
    api = app_factory()
    stuck = api.create({**SLOW, "config": {"script": ["block"], "slow_seconds": 1.5, "run_timeout_seconds": 0.2}})
    api.wait(stuck["id"], {"EXECUTING"})
    time.sleep(0.3)
    assert sweep(runtime_of(api)).run_timeouts == 1
    failed = api.get(stuck["id"])
    assert failed["status"] == "FAILED" and failed["error_category"] == "TIMEOUT"
    time.sleep(1.6)  # the provider returns; its outcome must not overwrite the verdict
    assert api.get(stuck["id"])["status"] == "FAILED"


def test_expired_results_answer_410_and_are_purged(app_factory: AppFactory) -> None:
    api = app_factory(tasks={"retention_seconds": 0.5})
    task = api.wait(api.create(generate())["id"])
    assert task["status"] == "COMPLETED" and task["expires_at"] is not None
    image = f"/api/v1/storage/images/{task['result_image_path']}"
    assert api.client.get(image, headers=api.headers()).status_code == 200
    time.sleep(0.6)
    surfaces = (
        f"/api/v1/tasks/{task['id']}",
        f"/api/v1/tasks/generation/{task['id']}",
        f"/v2/status/{task['id']}",
        f"/v1/jobs/{task['id']}",
        image,
    )
    for url in surfaces:
        response = api.client.get(url, headers=api.headers())
        assert response.status_code == 410, (url, response.text)
    assert "expired" in api.client.get(surfaces[0], headers=api.headers()).json()["detail"]
    assert sweep(runtime_of(api)).purged == 1
    assert row(api, task["id"]).purged_at is not None
    assert api.client.get(image, headers=api.headers()).status_code == 410  # the file is gone; still not a 404
    listed = api.client.get(f"/api/v1/storage/images?prefix=generations/{task['id']}/", headers=api.headers())
    assert listed.json()["count"] == 0
    unknown = f"/api/v1/storage/images/generations/{uuid.uuid4()}/result.png"
    assert api.client.get(unknown, headers=api.headers()).status_code == 404
    assert sweep(runtime_of(api)).purged == 0  # purged once


def test_without_retention_nothing_expires(api: Api) -> None:
    task = api.wait(api.create(generate())["id"])
    assert task["expires_at"] is None
