"""The spec's event schemas and how task events and workflow outcomes become them.

Each webhook body is one of these objects, serialised as JSON. ``metadata.sequence`` increases with every event
of a task (it is the id of the event row), so a receiver can also order events itself; deliveries of one task are
sent in that order anyway.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atelier.tasks.enums import TERMINAL_STATUSES, EventType, TaskStatus, TaskType
from atelier.tasks.models import Task, TaskEvent
from atelier.tasks.schemas import PUBLIC_MODELS
from atelier.tasks.transitions import WEBHOOK_EVENTS
from atelier.workflows.models import Workflow

# Task types whose result is an image: their terminal events are also reported as an InferenceStatusEvent.
INFERENCE_TYPES = frozenset(t.value for t, m in PUBLIC_MODELS.items() if "result_image_path" in m.model_fields)
_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


class BaseEvent(BaseModel):
    """Fields common to every event."""

    model_config = ConfigDict(title="BaseEvent")

    event_type: EventType
    task_id: uuid.UUID = Field(description="The task (for workflow events: the workflow) the event is about.")
    status: str
    timestamp: datetime = Field(description="When the event happened (UTC).")
    entity_id: str | None = None
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="`tenant`, `sequence` (increasing per task/workflow), `workflow_id` and `origin_reference` "
        "when set.",
    )
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_version: str | None = None


class TaskCreatedEvent(BaseEvent):
    """A task was accepted."""

    model_config = ConfigDict(title="TaskCreatedEvent")

    task_type: str
    created_at: datetime
    total_steps: int | None = None


class TaskStatusEvent(BaseEvent):
    """A task changed status."""

    model_config = ConfigDict(title="TaskStatusEvent")

    status: TaskStatus  # narrower than BaseEvent.status, as in the spec
    task_type: str
    progress: float = Field(description="Task progress percentage")
    error_category: str | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None


class InferenceStatusEvent(BaseEvent):
    """An image-producing task finished: where its result is."""

    model_config = ConfigDict(title="InferenceStatusEvent")

    backend_generation_id: uuid.UUID | None = None
    backend_prediction_id: uuid.UUID | None = None
    prompt_id: str | None = None
    result_image_path: str | None = None
    refined_image_path: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None


class TrainingStatusEvent(BaseEvent):
    """A training task changed status or made progress."""

    model_config = ConfigDict(title="TrainingStatusEvent")

    progress: float = 0.0
    current_step: int = 0
    total_steps: int = 0
    eta_seconds: float | None = None
    local_model_path: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None


class PreprocessingStatusEvent(BaseEvent):
    """A training's dataset preprocessing changed stage or made progress."""

    model_config = ConfigDict(title="PreprocessingStatusEvent")

    current_stage: str | None = None
    progress: float = 0.0
    processed_files_count: int = 0
    total_files_count: int = 0
    processed_dataset_path: str | None = None
    error_message: str | None = None
    completed_at: datetime | None = None


class WorkflowStatusEvent(BaseEvent):
    """A workflow finished (COMPLETED, FAILED or CANCELLED): sent to the workflow's `webhook_url`."""

    model_config = ConfigDict(title="WorkflowStatusEvent")

    workflow_id: uuid.UUID
    name: str
    completed_steps: int
    total_steps: int
    error_message: str | None = None
    completed_at: datetime | None = None
    final_step_result: dict[str, Any] | None = None


def _common(task: Task, event: TaskEvent) -> dict[str, Any]:
    metadata: dict[str, Any] = {"tenant": task.tenant_id, "sequence": event.id}
    if task.workflow_id:
        metadata["workflow_id"] = task.workflow_id
    if task.origin_reference:
        metadata["origin_reference"] = task.origin_reference
    data = task.task_data or {}
    entity = data.get("entity_id")
    return {
        "task_id": task.id,
        "timestamp": event.created_at,
        "entity_id": str(entity) if entity is not None else None,
        "metadata": metadata,
        "origin_instance": task.origin_instance,
        "origin_zone": task.origin_zone,
    }


def task_event_payloads(event: TaskEvent, task: Task) -> list[BaseEvent]:
    """The webhook bodies of one task event row: none, one, or two (a finished image task's inference event)."""
    if event.event_type not in WEBHOOK_EVENTS or event.status is None:  # the events flagged for the outbox
        return []
    common = _common(task, event)
    if event.event_type == EventType.TASK_CREATED.value:
        return [
            TaskCreatedEvent(
                event_type=EventType.TASK_CREATED,
                status=event.status,
                task_type=task.task_type,
                created_at=task.created_at,
                total_steps=1,
                **common,
            )
        ]
    status = TaskStatus(event.status)
    finished = event.status in _TERMINAL
    failed = status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
    error = (task.errors[-1] if task.errors else None) if failed else None
    payloads: list[BaseEvent] = [
        TaskStatusEvent(
            event_type=EventType.TASK_STATUS,
            status=status,
            task_type=task.task_type,
            progress=100.0 if status is TaskStatus.COMPLETED else (task.progress if finished else 0.0),
            error_category=task.error_category if failed else None,
            error_message=error,
            started_at=task.started_at if status is not TaskStatus.PENDING or finished else None,
            completed_at=event.created_at if finished else None,
            **common,
        )
    ]
    if finished and task.task_type in INFERENCE_TYPES:
        result = (task.task_data or {}).get("result_image_path") if status is TaskStatus.COMPLETED else None
        payloads.append(
            InferenceStatusEvent(
                event_type=EventType.INFERENCE_STATUS,
                status=event.status,
                backend_generation_id=task.id,
                result_image_path=result,
                refined_image_path=result if task.task_type == TaskType.REFINE.value else None,
                error_message=error,
                completed_at=event.created_at,
                **common,
            )
        )
    return payloads


def workflow_payload(workflow: Workflow, sequence: int) -> WorkflowStatusEvent:
    """The body sent to a workflow's ``webhook_url`` when it finishes."""
    metadata: dict[str, Any] = {"tenant": workflow.tenant_id, "sequence": sequence}
    if workflow.origin_reference:
        metadata["origin_reference"] = workflow.origin_reference
    return WorkflowStatusEvent(
        event_type=EventType.WORKFLOW_STATUS,
        task_id=workflow.id,
        workflow_id=workflow.id,
        name=workflow.name,
        status=workflow.status,
        timestamp=workflow.completed_at or workflow.updated_at,
        metadata=metadata,
        origin_instance=workflow.origin_instance,
        origin_zone=workflow.origin_zone,
        completed_steps=workflow.completed_steps,
        total_steps=workflow.total_steps,
        error_message=workflow.error_message,
        completed_at=workflow.completed_at,
        final_step_result=workflow.final_step_result,
    )
