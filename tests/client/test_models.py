"""Client models: forward compatible (unknown fields ignored, unknown enum values kept) and complete."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from atelier.client.models import Task, TaskEvent, TaskStatus, Workflow
from atelier.tasks import schemas

TASK = {
    "id": "6f1c0e0e-0000-4000-8000-000000000000",
    "task_type": "GENERATION",
    "status": "COMPLETED",
    "created_at": "2025-01-01T00:00:00Z",
    "updated_at": "2025-01-01T00:00:01Z",
}


def test_known_values_become_enum_members() -> None:
    task = Task.model_validate(TASK)
    assert task.status is TaskStatus.COMPLETED and task.finished


def test_unknown_values_and_fields_are_tolerated() -> None:
    task = Task.model_validate(
        {**TASK, "status": "QUARANTINED", "task_type": "HOLOGRAM", "error_category": "SOLAR_FLARE", "new_field": 1}
    )
    assert task.status == "QUARANTINED" and type(task.status) is str
    assert task.task_type == "HOLOGRAM" and task.error_category == "SOLAR_FLARE"
    assert not task.finished and not hasattr(task, "new_field")
    event = TaskEvent.model_validate(
        {"event_type": "TASK_TELEPORTED", "task_id": TASK["id"], "created_at": TASK["created_at"]}
    )
    assert event.event_type == "TASK_TELEPORTED"
    workflow = Workflow.model_validate(
        {
            "id": TASK["id"],
            "name": "w",
            "status": "HIBERNATING",
            "created_at": TASK["created_at"],
            "updated_at": TASK["created_at"],
        }
    )
    assert workflow.status == "HIBERNATING" and not workflow.finished


@pytest.mark.parametrize("public", typing.get_args(typing.get_args(schemas.TaskPublic)[0]))
def test_task_covers_every_field_of_every_task_type(public: type[BaseModel]) -> None:
    missing = set(public.model_fields) - set(Task.model_fields)
    assert not missing, f"{public.__name__}: {sorted(missing)}"
