"""Regression: an attempt that finished while the database was unreachable records its outcome once it is back.

It used to retry the recording once, at once, and give up: the task stayed EXECUTING until its lease expired and the
reaper ran the provider a second time (two side effects; seen by the PostgreSQL restart chaos test).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from atelier.tasks.execution import TaskRunner
from tests.chaos.conftest import generation
from tests.conftest import AppFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_outcome_is_recorded_after_a_database_outage(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    real = TaskRunner._record
    calls: list[int] = []

    def flaky(self: TaskRunner, *args: Any) -> str:
        calls.append(1)
        if len(calls) <= 3:  # the database is down for the first three tries
            raise OperationalError("UPDATE tasks", {}, Exception("connection refused"))
        return real(self, *args)

    monkeypatch.setattr(TaskRunner, "_record", flaky)
    api = app_factory()
    task = api.wait(api.create(generation(0.0))["id"], timeout=30)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0 and task["resume_attempt_count"] == 0
    assert len(calls) == 4
    assert api.side_effects(task["id"]) == 1
