"""Nothing accepted is lost: a restarted embedded server runs what the previous process left behind."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from atelier.core.db import session_scope
from atelier.core.time import utcnow
from atelier.tasks.models import Task
from tests.api.helpers import runtime_of
from tests.conftest import AppFactory, b64_png


def adjuster() -> dict[str, object]:
    """A cheap real task."""
    return {
        "task_type": "IMAGE_ADJUSTER",
        "input_image": b64_png((40, 20)),
        "aspect_ratio": 1.0,
        "mode": "pad",
    }


def test_pending_tasks_run_after_restart(app_factory: AppFactory) -> None:
    first = app_factory(worker=False)
    ids = [first.create(adjuster())["id"] for _ in range(3)]
    assert {first.get(i)["status"] for i in ids} == {"PENDING"}
    first.close()  # the process goes away with its in-memory queue

    second = app_factory(worker=True)
    for task_id in ids:
        task = second.wait(task_id)
        assert task["status"] == "COMPLETED", task["errors"]
        assert task["result_image_path"].endswith("result.png")
        assert task["is_resumed"] is False


def test_task_left_executing_by_a_crash_is_resumed(app_factory: AppFactory) -> None:
    first = app_factory(worker=False)
    task_id = first.create({"task_type": "GENERATION", "prompt": "p", "config": {"script": ["ok"]}})["id"]
    with session_scope(runtime_of(first).sessions) as session:  # what a crash mid-run leaves in the table
        session.execute(
            update(Task)
            .where(Task.id == uuid.UUID(task_id))
            .values(status="EXECUTING", lease_owner="dead-worker", lease_expires_at=utcnow() + timedelta(hours=1))
        )
    first.close()

    second = app_factory(worker=True)
    task = second.wait(task_id)
    assert task["status"] == "COMPLETED"
    assert task["is_resumed"] is True
    assert task["resume_attempt_count"] == 1
    assert task["last_resume_attempt"] is not None
    assert second.side_effects(task_id) == 1


def test_retry_scheduled_before_restart_still_runs(app_factory: AppFactory) -> None:
    first = app_factory(worker=False)
    task_id = first.create({"task_type": "GENERATION", "prompt": "p", "config": {"script": ["ok"]}})["id"]
    with session_scope(runtime_of(first).sessions) as session:
        session.execute(
            update(Task).where(Task.id == uuid.UUID(task_id)).values(not_before=utcnow() + timedelta(seconds=0.3))
        )
    first.close()

    second = app_factory(worker=True)
    assert second.wait(task_id)["status"] == "COMPLETED"
