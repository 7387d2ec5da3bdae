"""Request builders of every resource: pure functions from arguments to a ``Call`` (no I/O here)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from atelier.client._base import Call, as_json, body, model, model_list, prefer, raw
from atelier.client.models import (
    EvaluationResult,
    EvaluatorHealth,
    LoRADeleted,
    LoRAUpload,
    MonitoredTaskPage,
    MonitoringStats,
    QueueStatsList,
    StorageDeleted,
    StorageList,
    StorageObject,
    Task,
    TaskCleanup,
    TrainingTask,
    WorkersHealth,
    WorkerStatsList,
    Workflow,
    WorkflowCleanup,
    WorkflowList,
)

TASKS = "/api/v1/tasks"
WORKFLOWS = "/api/v1/workflows"
STORAGE = "/api/v1/storage/images"
MONITORING = "/api/v1/monitoring"
TRAINING = "/api/v1/training"
EVALUATION = "/api/v1/evaluation"

Id = uuid.UUID | str
FileContent = bytes | Any  # bytes or a binary file object


def _quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path.lstrip("/"), safe="/")


# --------------------------------------------------------------------------------------------- tasks


def task_create(task_type: str, fields: Mapping[str, Any], headers: Mapping[str, str], wait: int | None) -> Call[Task]:
    """POST /api/v1/tasks/ (keyed creates may be repeated safely)."""
    payload = {"task_type": str(task_type), **body(fields)}
    all_headers = {**headers, **prefer(wait)}
    return Call("POST", f"{TASKS}/", model(Task), json=payload, headers=all_headers, repeatable=bool(headers))


def task_get(task_id: Id) -> Call[Task]:
    """GET /api/v1/tasks/{id}."""
    return Call("GET", f"{TASKS}/{task_id}", model(Task), repeatable=True)


def task_list(filters: Mapping[str, Any]) -> Call[list[Task]]:
    """GET /api/v1/tasks/ with filters (``limit``, ``skip``, ``status``, ``task_type``, ``origin_*``)."""
    params = {k: str(v) for k, v in filters.items() if v is not None}
    return Call("GET", f"{TASKS}/", model_list(Task), params=params, repeatable=True)


def task_update(task_id: Id, fields: Mapping[str, Any]) -> Call[Task]:
    """PUT /api/v1/tasks/{id} (only the given fields)."""
    return Call("PUT", f"{TASKS}/{task_id}", model(Task), json=dict(fields), repeatable=True)


def task_delete(task_id: Id) -> Call[Task]:
    """DELETE /api/v1/tasks/{id}: hard delete."""
    return Call("DELETE", f"{TASKS}/{task_id}", model(Task))


def task_cancel(task_id: Id) -> Call[Task]:
    """POST /api/v1/tasks/{id}/cancel."""
    return Call("POST", f"{TASKS}/{task_id}/cancel", model(Task))


def task_cleanup(task_id: Id) -> Call[TaskCleanup]:
    """POST /api/v1/tasks/{id}/cleanup: soft delete."""
    return Call("POST", f"{TASKS}/{task_id}/cleanup", model(TaskCleanup))


def task_deliveries(task_id: Id, state: str | None, skip: int, limit: int) -> Call[Any]:
    """GET /api/v1/tasks/{id}/deliveries: the webhook delivery log (plain JSON)."""
    params = {"state": state, "skip": skip, "limit": limit}
    return Call("GET", f"{TASKS}/{task_id}/deliveries", as_json, params=params, repeatable=True)


def task_events_path(task_id: Id) -> str:
    """Path of a task's server-sent event stream."""
    return f"{TASKS}/{task_id}/events"


# --------------------------------------------------------------------------------------------- workflows


def workflow_create(
    definition: Mapping[str, Any], start: bool, headers: Mapping[str, str], wait: int | None
) -> Call[Workflow]:
    """POST /api/v1/workflows/."""
    return Call(
        "POST",
        f"{WORKFLOWS}/",
        model(Workflow),
        params={"start": str(start).lower()},
        json=dict(definition),
        headers={**headers, **prefer(wait)},
        repeatable=bool(headers),
    )


def workflow_get(workflow_id: Id) -> Call[Workflow]:
    """GET /api/v1/workflows/{id}."""
    return Call("GET", f"{WORKFLOWS}/{workflow_id}", model(Workflow), repeatable=True)


def workflow_list(filters: Mapping[str, Any]) -> Call[WorkflowList]:
    """GET /api/v1/workflows/."""
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in filters.items() if v is not None}
    return Call("GET", f"{WORKFLOWS}/", model(WorkflowList), params=params, repeatable=True)


def workflow_update(workflow_id: Id, fields: Mapping[str, Any]) -> Call[Workflow]:
    """PATCH /api/v1/workflows/{id} (name, description, webhook_url)."""
    return Call("PATCH", f"{WORKFLOWS}/{workflow_id}", model(Workflow), json=dict(fields), repeatable=True)


def workflow_action(workflow_id: Id, action: str) -> Call[Workflow]:
    """POST /api/v1/workflows/{id}/{start|resume}, or DELETE (cancel)."""
    if action == "cancel":
        return Call("DELETE", f"{WORKFLOWS}/{workflow_id}", model(Workflow))
    return Call("POST", f"{WORKFLOWS}/{workflow_id}/{action}", model(Workflow))


def workflow_cleanup(workflow_id: Id, cleanup_tasks: bool) -> Call[WorkflowCleanup]:
    """POST /api/v1/workflows/{id}/cleanup."""
    params = {"cleanup_tasks": str(cleanup_tasks).lower()}
    return Call("POST", f"{WORKFLOWS}/{workflow_id}/cleanup", model(WorkflowCleanup), params=params)


# --------------------------------------------------------------------------------------------- storage


def storage_list(prefix: str | None, limit: int, start_after: str | None) -> Call[StorageList]:
    """GET /api/v1/storage/images (one page)."""
    params = {"prefix": prefix, "limit": limit, "start_after": start_after}
    return Call("GET", STORAGE, model(StorageList), params=params, repeatable=True)


def storage_get(path: str) -> Call[Any]:
    """GET /api/v1/storage/images/{path}: the raw response (bytes, or the redirect already followed)."""
    return Call("GET", f"{STORAGE}/{_quote_path(path)}", raw, repeatable=True)


def storage_exists(path: str) -> Call[Any]:
    """HEAD /api/v1/storage/images/{path}."""
    return Call("HEAD", f"{STORAGE}/{_quote_path(path)}", raw, repeatable=True)


def storage_put(path: str, content: FileContent, filename: str, content_type: str | None) -> Call[StorageObject]:
    """POST /api/v1/storage/images/{path} (multipart ``file``)."""
    files = {"file": (filename, content, content_type or "application/octet-stream")}
    return Call("POST", f"{STORAGE}/{_quote_path(path)}", model(StorageObject), files=files, repeatable=True)


def storage_delete(path: str) -> Call[StorageDeleted]:
    """DELETE /api/v1/storage/images/{path}."""
    return Call("DELETE", f"{STORAGE}/{_quote_path(path)}", model(StorageDeleted))


# --------------------------------------------------------------------------------------------- LoRA


def lora_upload(
    content: FileContent, filename: str, entity_type: str | None, use_safe_filename: bool, admin: bool
) -> Call[LoRAUpload]:
    """POST /api/v1/lora/upload (or the admin upload, which also takes ``faces``)."""
    path = "/api/v1/admin/lora/upload" if admin else "/api/v1/lora/upload"
    data = {"use_safe_filename": str(use_safe_filename).lower(), **body({"entity_type": entity_type})}
    files = {"file": (filename, content, "application/octet-stream")}
    return Call("POST", path, model(LoRAUpload), files=files, data=data)


def lora_delete(partial_path: str) -> Call[LoRADeleted]:
    """DELETE /api/v1/admin/lora (admin; the file is moved to the bin)."""
    return Call("DELETE", "/api/v1/admin/lora", model(LoRADeleted), json={"partial_path": partial_path})


# --------------------------------------------------------------------------------------------- monitoring


def monitoring_queues() -> Call[QueueStatsList]:
    """GET /api/v1/monitoring/queues."""
    return Call("GET", f"{MONITORING}/queues", model(QueueStatsList), repeatable=True)


def monitoring_workers() -> Call[WorkerStatsList]:
    """GET /api/v1/monitoring/workers."""
    return Call("GET", f"{MONITORING}/workers", model(WorkerStatsList), repeatable=True)


def monitoring_workers_health() -> Call[WorkersHealth]:
    """GET /api/v1/monitoring/workers/health."""
    return Call("GET", f"{MONITORING}/workers/health", model(WorkersHealth), repeatable=True)


def monitoring_tasks(filters: Mapping[str, Any]) -> Call[MonitoredTaskPage]:
    """GET /api/v1/monitoring/tasks (one page)."""
    params = {k: str(v) for k, v in filters.items() if v is not None}
    return Call("GET", f"{MONITORING}/tasks", model(MonitoredTaskPage), params=params, repeatable=True)


def monitoring_stats(origin_instance: str | None, origin_zone: str | None) -> Call[MonitoringStats]:
    """GET /api/v1/monitoring/stats."""
    params = {"origin_instance": origin_instance, "origin_zone": origin_zone}
    return Call("GET", f"{MONITORING}/stats", model(MonitoringStats), params=params, repeatable=True)


# --------------------------------------------------------------------------------------------- training, evaluation


def training_create(fields: Mapping[str, Any]) -> Call[TrainingTask]:
    """POST /api/v1/training/."""
    return Call("POST", f"{TRAINING}/", model(TrainingTask), json=body(fields))


def training_get(task_id: Id) -> Call[TrainingTask]:
    """GET /api/v1/training/{id}."""
    return Call("GET", f"{TRAINING}/{task_id}", model(TrainingTask), repeatable=True)


def training_list(limit: int, skip: int) -> Call[list[TrainingTask]]:
    """GET /api/v1/training/."""
    return Call("GET", f"{TRAINING}/", model_list(TrainingTask), params={"limit": limit, "skip": skip}, repeatable=True)


def training_cancel(task_id: Id) -> Call[TrainingTask]:
    """POST /api/v1/training/{id}/cancel."""
    return Call("POST", f"{TRAINING}/{task_id}/cancel", model(TrainingTask))


def evaluation_evaluate(fields: Mapping[str, Any], provider: str | None) -> Call[EvaluationResult]:
    """POST /api/v1/evaluation/."""
    return Call("POST", f"{EVALUATION}/", model(EvaluationResult), params={"provider": provider}, json=body(fields))


def evaluation_health(provider: str | None) -> Call[EvaluatorHealth]:
    """GET /api/v1/evaluation/health."""
    return Call("GET", f"{EVALUATION}/health", model(EvaluatorHealth), params={"provider": provider}, repeatable=True)
