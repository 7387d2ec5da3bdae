"""Status surfaces as views over task rows: Bria-style ``/v2/status`` and ``/v1/jobs``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from atelier.storage.service import TenantStorage
from atelier.tasks.enums import ErrorCategory, TaskStatus
from atelier.tasks.views import TaskRecord

# Numeric codes of /v2/status errors, HTTP-like so clients can bucket them.
ERROR_CODES: dict[str, int] = {
    ErrorCategory.INVALID_INPUT: 422,
    ErrorCategory.PROVIDER_ERROR: 502,
    ErrorCategory.PROVIDER_NOT_AVAILABLE: 501,
    ErrorCategory.PROVIDER_TIMEOUT: 504,
    ErrorCategory.RATE_LIMITED: 429,
    ErrorCategory.CONTENT_REJECTED: 451,
    ErrorCategory.NETWORK_ERROR: 502,
    ErrorCategory.STORAGE_ERROR: 500,
    ErrorCategory.WORKER_LOST: 500,
    ErrorCategory.CANCELLED: 499,
    ErrorCategory.QUEUE_TIMEOUT: 408,
    ErrorCategory.TIMEOUT: 504,
    ErrorCategory.INTERNAL_ERROR: 500,
}
JOB_STATUS = {
    TaskStatus.PENDING: "pending",
    TaskStatus.EXECUTING: "processing",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}


def media_url(storage: TenantStorage, base: str, path: str) -> str:
    """Absolute URL of a stored file (the backend's public URL when it has one)."""
    if path.lower().startswith(("http://", "https://")):
        return path
    return storage.public_url(path) or f"{base}/api/v1/storage/images/{path}"


def result_of(task: TaskRecord, storage: TenantStorage, base: str) -> dict[str, Any]:
    """The COMPLETED result: ``image_url`` or ``video_url`` plus what the task knows (seed, prompt…)."""
    data = task.task_data or {}
    result: dict[str, Any] = {}
    images = [p for p in [data.get("result_image_path"), *(data.get("result_image_paths") or [])] if p]
    if data.get("result_url"):
        images.insert(0, data["result_url"])
    if images:
        result["image_url"] = media_url(storage, base, images[0])
        if len(images) > 1:
            result["image_urls"] = [media_url(storage, base, p) for p in images]
    if data.get("result_video_path"):
        result["video_url"] = media_url(storage, base, data["result_video_path"])
    for key, out in (("seed", "seed"), ("prompt", "prompt"), ("result_text", "text")):
        if data.get(key) is not None:
            result[out] = data[key]
    return result


def last_error(task: TaskRecord) -> str:
    """The most recent error message of a task."""
    return (task.errors or ["failed"])[-1]


def category_of(task: TaskRecord) -> ErrorCategory:
    """The task's error category (INTERNAL_ERROR when unknown)."""
    try:
        return ErrorCategory(task.error_category or "INTERNAL_ERROR")
    except ValueError:
        return ErrorCategory.INTERNAL_ERROR


def v2_status(task: TaskRecord, storage: TenantStorage, base: str) -> dict[str, Any]:
    """Body of ``GET /v2/status/{request_id}`` for an existing task."""
    status = TaskStatus(task.status)
    body: dict[str, Any] = {"request_id": str(task.id)}
    if status in (TaskStatus.PENDING, TaskStatus.EXECUTING):
        body.update(status="IN_PROGRESS", progress=task.progress)
    elif status is TaskStatus.COMPLETED:
        body.update(status="COMPLETED", result=result_of(task, storage, base))
    else:
        category = category_of(task)
        details = f"{category.value}: task {status.value.lower()} after {task.attempt} attempt(s)"
        body.update(
            status="ERROR",
            error={"code": ERROR_CODES[category], "message": last_error(task), "details": details},
        )
    return body


def v1_job(task: TaskRecord, storage: TenantStorage, base: str, public: dict[str, Any]) -> dict[str, Any]:
    """Body of ``GET /v1/jobs/{id}``; absent timestamps are omitted, as the spec says."""
    status = TaskStatus(task.status)
    body: dict[str, Any] = {
        "job_id": str(task.id),
        "status": JOB_STATUS[status],
        "created_at": task.created_at.isoformat(),
        "scenes_completed": 1 if status is TaskStatus.COMPLETED else 0,
        "scenes_total": 1,
    }
    if task.started_at:
        body["started_at"] = task.started_at.isoformat()
    if task.completed_at:
        body["completed_at"] = task.completed_at.isoformat()
    if status is TaskStatus.COMPLETED:
        body["result"] = {**public, **result_of(task, storage, base)}
    elif status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        body["error"] = {"code": category_of(task).value.lower(), "message": last_error(task)}
    return body


# ---------------------------------------------------------------------------------------------- workflows

WORKFLOW_JOB_STATUS = {
    "PENDING": "pending",
    "RUNNING": "processing",
    "PAUSED": "processing",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "failed",
}


def _final_result(workflow: Any, storage: TenantStorage, base: str) -> dict[str, Any]:
    data = workflow.final_step_result or {}
    return {**data, **result_of(SimpleNamespace(task_data=data), storage, base)}


def workflow_v2_status(workflow: Any, storage: TenantStorage, base: str) -> dict[str, Any]:
    """``/v2/status`` of a workflow: in progress until it ends, then its final step's result or its error."""
    body: dict[str, Any] = {"request_id": str(workflow.id)}
    if workflow.status in ("PENDING", "RUNNING", "PAUSED"):
        body.update(status="IN_PROGRESS", progress=round(100 * workflow.progress, 2))
    elif workflow.status == "COMPLETED":
        final = SimpleNamespace(task_data=workflow.final_step_result or {})
        body.update(status="COMPLETED", result=result_of(final, storage, base))
    else:
        category = ErrorCategory.CANCELLED if workflow.status == "CANCELLED" else ErrorCategory.PROVIDER_ERROR
        message = workflow.error_message or f"workflow {workflow.status.lower()}"
        done = f"{workflow.completed_steps}/{workflow.total_steps}"
        details = f"workflow {workflow.status.lower()}: {done} steps completed"
        body.update(status="ERROR", error={"code": ERROR_CODES[category], "message": message, "details": details})
    return body


def workflow_v1_job(workflow: Any, storage: TenantStorage, base: str) -> dict[str, Any]:
    """``/v1/jobs`` of a workflow: scenes are its steps; the result is its final step's."""
    body: dict[str, Any] = {
        "job_id": str(workflow.id),
        "status": WORKFLOW_JOB_STATUS[workflow.status],
        "created_at": workflow.created_at.isoformat(),
        "scenes_completed": workflow.completed_steps,
        "scenes_total": workflow.total_steps,
    }
    if workflow.started_at:
        body["started_at"] = workflow.started_at.isoformat()
    if workflow.completed_at:
        body["completed_at"] = workflow.completed_at.isoformat()
    if workflow.status == "COMPLETED":
        body["result"] = _final_result(workflow, storage, base)
    elif workflow.status in ("FAILED", "CANCELLED"):
        code = "cancelled" if workflow.status == "CANCELLED" else "workflow_failed"
        body["error"] = {"code": code, "message": workflow.error_message or f"workflow {workflow.status.lower()}"}
    return body
