"""Turning task rows into the public read models."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi import Request

from atelier.core.runtime import Runtime
from atelier.tasks.enums import TaskType
from atelier.tasks.models import Task
from atelier.tasks.schemas import PUBLIC_MODELS, TaskPublicBase

# A task as an ORM object or as a plain record read with Core (same attribute names).
TaskRecord = Task | SimpleNamespace

COMPUTED_FIELDS = frozenset({"request_id", "status_url", "queue_position", "eta_seconds"})
ROW_FIELDS = tuple(name for name in TaskPublicBase.model_fields if name not in COMPUTED_FIELDS)


def base_url(runtime: Runtime, request: Request) -> str:
    """Absolute base URL of the API, without a trailing slash."""
    return (runtime.settings.server.public_base_url or str(request.base_url)).rstrip("/")


def status_url(base: str, task: TaskRecord) -> str:
    """Where the Bria-style status of ``task`` is polled."""
    return f"{base}/v2/status/{task.id}"


def task_fields(task: TaskRecord) -> dict[str, Any]:
    """Row columns and type-specific data merged into one dict (the shape of the public schemas)."""
    data: dict[str, Any] = {name: getattr(task, name) for name in ROW_FIELDS}
    data.update(task.task_data or {})
    config = task.provider_config or {}
    for key in ("fal_app_id", "fal_request_id"):  # spec: "Get FAL app/request ID from provider config."
        if data.get(key) is None:
            data[key] = config.get(key)
    return data


def to_public(task: TaskRecord, base: str) -> TaskPublicBase:
    """The type-specific public model of a task (with a queue position and ETA where ``read_task`` added them)."""
    data = task_fields(task)
    data.update(request_id=str(task.id), status_url=status_url(base, task))
    queue_estimate = getattr(task, "queue_estimate", None)
    if queue_estimate is not None:
        data["queue_position"], data["eta_seconds"] = queue_estimate
    return PUBLIC_MODELS[TaskType(task.task_type)].model_validate(data)
