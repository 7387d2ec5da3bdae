"""Task rules: create, read, update, cancel, delete, cleanup. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from atelier.core.auth import Principal
from atelier.core.db import read_connection
from atelier.core.errors import ConflictError, InvalidInputError, NotFoundError, ServiceUnavailableError
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.delivery.signing import check_webhook_url
from atelier.engine.dispatch import enqueue, take_failures
from atelier.providers.registry import DEFAULT_PROVIDER, config_model, queue_for
from atelier.storage.service import TenantStorage
from atelier.tasks import admission, lifetimes, repository
from atelier.tasks.enums import (
    OUTPUT_PREFIX,
    TERMINAL_STATUSES,
    EventType,
    ProviderType,
    TaskStatus,
    TaskType,
)
from atelier.tasks.execution import dispatch_for
from atelier.tasks.models import Task
from atelier.tasks.queue import estimate
from atelier.tasks.repository import TaskFilters
from atelier.tasks.schemas import (
    SERVICE_MANAGED,
    UPDATE_MODELS,
    GenerationTaskUpdate,
    TaskCleanupResponse,
    TaskCreateBase,
)
from atelier.tasks.sources import SourceResolver
from atelier.tasks.transitions import record_event, transition

COMMON_CREATE_FIELDS = frozenset(TaskCreateBase.model_fields) | {"task_type"}
# Update fields stored in their own column; every other sent field lands in ``task_data``.
COLUMN_FIELDS = frozenset(
    {
        "priority", "executor_type", "executor_instance", "errors", "config", "origin_instance", "origin_zone",
        "origin_tenant_id", "origin_reference", "service_task_id", "progress", "is_resumed", "resume_attempt_count",
        "last_resume_attempt", "error_category", "service_requests", "active_provider_capabilities",
        "provider_type", "queue_name", "fallback_provider_type", "fallback_provider_config",
        "fallback_provider_capabilities",
    }
)  # fmt: skip
REQUEUE_FIELDS = frozenset({"priority", "queue_name", "provider_type"})


def validate_provider_config(
    provider_type: ProviderType | None, raw: dict[str, Any] | None, field: str
) -> dict[str, Any] | None:
    """Check a provider config against its schema; return it normalised (422 with the field's loc otherwise)."""
    if provider_type is None:
        if raw:
            raise InvalidInputError(f"{field} needs a provider type", loc=("body", field))
        return raw
    try:
        model = config_model(provider_type).model_validate({**(raw or {}), "provider_type": provider_type})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ("body", field, *first["loc"])
        raise InvalidInputError(f"invalid {field} for {provider_type.value}: {first['msg']}", loc=loc) from exc
    return model.model_dump(mode="json")


def read_task(
    runtime: Runtime,
    principal: Principal,
    task_id: uuid.UUID,
    task_type: TaskType | None = None,
    *,
    with_estimate: bool = False,
) -> SimpleNamespace:
    """A tenant's task as a plain record, without an ORM session (404 as ``TaskService.get``).

    ``with_estimate``: a PENDING task also gets ``queue_estimate`` (queue position, ETA), read on the same connection.
    """
    with read_connection(runtime.engine) as conn:
        task = repository.read_record(conn, principal.tenant, task_id, with_ahead=with_estimate)
        if task is None or (task_type is not None and task.task_type != task_type.value):
            kind = f"{task_type.value.lower()} task" if task_type else "task"
            raise NotFoundError(f"{kind} {task_id} not found")
        lifetimes.check_not_expired(task)
        if with_estimate and task.status == TaskStatus.PENDING.value:
            task.queue_estimate = estimate(conn, task.queue_name, task.queue_ahead)
    return task


class TaskService:
    """Operations on the tasks of one principal's tenant."""

    def __init__(self, session: Session, runtime: Runtime, principal: Principal) -> None:
        self.session = session
        self.rt = runtime
        self.principal = principal
        self.storage = TenantStorage(runtime.storage, principal.tenant)

    # ------------------------------------------------------------------------------------ create

    def create(self, body: TaskCreateBase, *, admit: bool = True) -> Task:
        """Validate everything, store inline inputs, insert the PENDING row and publish after commit.

        ``admit``: apply the tenant's rate limit and cap (429); workflow steps are admitted with their workflow.
        """
        self.principal.require_write()
        settings = self.rt.settings
        now = utcnow()
        timeouts = lifetimes.limits_from(
            body.config,
            {
                "queue_timeout_seconds": settings.tasks.queue_timeout_seconds,
                "run_timeout_seconds": settings.tasks.run_timeout_seconds,
            },
        )
        if admit:
            admission.admit(self.session, settings.limits, self.principal.tenant, now)
        task_type = TaskType(getattr(body, "task_type"))  # noqa: B009 - every concrete create model has it
        provider = body.provider_type or DEFAULT_PROVIDER.get(task_type)
        provider_config = validate_provider_config(provider, body.provider_config, "provider_config")
        fallback_config = validate_provider_config(
            body.fallback_provider_type, body.fallback_provider_config, "fallback_provider_config"
        )
        check_webhook_url(body.webhook_url, self.rt.settings, loc=("body", "webhook_url"))
        task_id = uuid.uuid4()
        raw = body.model_dump(mode="json")
        resolver = SourceResolver(self.storage, self.rt.fetch_limits, task_type, task_id)
        sources = resolver.resolve(raw)
        task_data = {k: v for k, v in raw.items() if k not in COMMON_CREATE_FIELDS | sources.consumed}
        task_data.update(sources.fields)
        resolver.persist(sources)
        task = Task(
            id=task_id,
            tenant_id=self.principal.tenant,
            task_type=task_type.value,
            status=TaskStatus.PENDING.value,
            priority=body.priority,
            config=body.config,
            task_data=task_data,
            provider_type=provider.value if provider else None,
            provider_config=provider_config,
            active_provider_capabilities=body.active_provider_capabilities,
            fallback_provider_type=body.fallback_provider_type.value if body.fallback_provider_type else None,
            fallback_provider_config=fallback_config,
            fallback_provider_capabilities=body.fallback_provider_capabilities,
            queue_name=queue_for(provider, body.queue_name),
            webhook_url=body.webhook_url,
            origin_instance=body.origin_instance,
            origin_zone=body.origin_zone,
            origin_tenant_id=body.origin_tenant_id,
            origin_reference=body.origin_reference,
            workflow_id=task_data.get("workflow_id"),
            max_retries=self._max_retries(body.config),
            errors=[],
            service_requests=[],
            queue_deadline_at=_after(now, timeouts["queue_timeout_seconds"]),
            run_timeout_seconds=timeouts["run_timeout_seconds"],
            created_at=now,
            updated_at=now,
        )
        bursting = admission.bursting(self.session, settings.limits, self.principal.tenant)
        self.session.add(task)
        record_event(self.session, task, EventType.TASK_CREATED, data={"task_type": task_type.value})
        enqueue(self.session, dispatch_for(task, bursting=bursting))
        self.session.flush()
        return task

    def ensure_published(self, task: Task) -> None:
        """After the commit of a create: if the broker refused the message, take the task back and answer 503.

        The client is told the submit did not happen, so the row and its stored inputs are removed; a task
        the client believes rejected must never run behind its back.
        """
        failed = {d.task_id for d in take_failures(self.session)}
        if task.id not in failed:
            return
        self._delete_files(task)
        self.session.delete(task)
        self.session.commit()
        raise ServiceUnavailableError("the task queue is unreachable; nothing was submitted, retry shortly")

    def _max_retries(self, config: dict[str, Any] | None) -> int:
        value = (config or {}).get("max_retries")
        if value is None:
            return self.rt.settings.tasks.max_retries
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
            raise InvalidInputError(
                "config.max_retries must be an integer 0..20", loc=("body", "config", "max_retries")
            )
        return value

    # ------------------------------------------------------------------------------------ read

    def get(self, task_id: uuid.UUID, *, task_type: TaskType | None = None, for_update: bool = False) -> Task:
        """The tenant's task (404 if missing, another tenant's, or of another type when one is required)."""
        task = repository.get_for_tenant(self.session, self.principal.tenant, task_id, for_update=for_update)
        if task is None or (task_type is not None and task.task_type != task_type.value):
            kind = f"{task_type.value.lower()} task" if task_type else "task"
            raise NotFoundError(f"{kind} {task_id} not found")
        return task

    def find(self, filters: TaskFilters, *, limit: int, skip: int) -> Sequence[Task]:
        """Newest first."""
        return repository.list_for_tenant(self.session, self.principal.tenant, filters, limit=limit, skip=skip)

    # ------------------------------------------------------------------------------------ update

    def update(self, task_id: uuid.UUID, body: BaseModel, *, task_type: TaskType | None = None) -> Task:
        """Apply the sent fields; ``status`` goes through the state machine (409 on illegal edges)."""
        self.principal.require_write()
        task = self.get(task_id, task_type=task_type, for_update=True)
        changes = self._typed_changes(task, body)
        for name in SERVICE_MANAGED & changes.keys():
            if changes[name] is not None:
                raise InvalidInputError(f"{name} is managed by the service and cannot be set", loc=("body", name))
        status = changes.pop("status", None)
        if REQUEUE_FIELDS & changes.keys() and task.status != TaskStatus.PENDING.value:
            moved = sorted(REQUEUE_FIELDS & changes.keys())
            raise ConflictError(f"{', '.join(moved)} can only change while the task is PENDING")
        self._apply_fields(task, changes)
        if status is not None:
            self._apply_status(task, TaskStatus(status))
        elif REQUEUE_FIELDS & changes.keys():
            enqueue(self.session, dispatch_for(task))  # new priority/queue: the old message is dropped by claim
        task.updated_at = utcnow()
        self.session.flush()
        return task

    def _typed_changes(self, task: Task, body: BaseModel) -> dict[str, Any]:
        """The sent fields, validated by the update schema of the task's own type."""
        sent = body.model_dump(exclude_unset=True)
        generation = isinstance(body, GenerationTaskUpdate)
        model = GenerationTaskUpdate if generation else UPDATE_MODELS[TaskType(task.task_type)]
        try:
            return model.model_validate(sent).model_dump(exclude_unset=True, mode="json")
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidInputError(
                f"{first['msg']} (for a {task.task_type} task)", loc=("body", *first["loc"])
            ) from exc

    def _apply_fields(self, task: Task, changes: dict[str, Any]) -> None:
        if "provider_type" in changes or "fallback_provider_type" in changes:
            validate_provider_config(
                _pt(changes.get("provider_type", task.provider_type)), task.provider_config, "provider_config"
            )
        if "queue_name" in changes or "provider_type" in changes:
            changes["queue_name"] = queue_for(
                _pt(changes.get("provider_type", task.provider_type)), changes.get("queue_name")
            )
        extra: dict[str, Any] = {}
        for name, value in changes.items():
            if name in COLUMN_FIELDS:
                setattr(task, name, value)
            else:
                extra[name] = value
        if extra:
            task.task_data = {**(task.task_data or {}), **extra}

    def _apply_status(self, task: Task, status: TaskStatus) -> None:
        if status is TaskStatus(task.status):
            return
        if status is TaskStatus.CANCELLED:
            self._cancel(task)
            return
        transition(self.session, task, status, message=f"status set to {status.value} by {self.principal.subject}")
        if status is TaskStatus.PENDING:
            enqueue(self.session, dispatch_for(task))

    # ------------------------------------------------------------------------------------ cancel/delete

    def cancel(self, task_id: uuid.UUID, *, task_type: TaskType | None = None) -> Task:
        """PENDING → CANCELLED at once; EXECUTING → flag the provider polls; finished → 409."""
        self.principal.require_write()
        task = self.get(task_id, task_type=task_type, for_update=True)
        self._cancel(task)
        self.session.flush()
        return task

    def _cancel(self, task: Task) -> None:
        current = TaskStatus(task.status)
        if current in TERMINAL_STATUSES:
            raise ConflictError(f"task {task.id} is already {current.value}; it cannot be cancelled")
        if current is TaskStatus.PENDING:
            transition(self.session, task, TaskStatus.CANCELLED, message=f"cancelled by {self.principal.subject}")
            return
        if not task.cancel_requested:
            task.cancel_requested = True
            task.updated_at = utcnow()
            record_event(self.session, task, EventType.TASK_CANCEL_REQUESTED, f"requested by {self.principal.subject}")

    def delete(self, task_id: uuid.UUID) -> tuple[Task, list[str]]:
        """Hard delete: files under the task's folder, then the row (and its events)."""
        self.principal.require_write()
        task = self._stop_for_removal(task_id)
        paths = self._delete_files(task)
        self.session.delete(task)
        self.session.flush()
        return task, paths

    def cleanup(self, task_id: uuid.UUID) -> TaskCleanupResponse:
        """Soft delete: files removed, row kept with ``is_deleted``/``deleted_at``."""
        self.principal.require_write()
        task = self._stop_for_removal(task_id)
        paths = self._delete_files(task)
        task.is_deleted = True
        task.deleted_at = task.updated_at = utcnow()
        self.session.flush()
        return TaskCleanupResponse(task_id=task.id, is_deleted=True, deleted_at=task.deleted_at, deleted_paths=paths)

    def _stop_for_removal(self, task_id: uuid.UUID) -> Task:
        task = self.get(task_id, for_update=True)
        if task.status == TaskStatus.EXECUTING.value:
            raise ConflictError(f"task {task.id} is running; cancel it and wait for CANCELLED first")
        if task.status == TaskStatus.PENDING.value:
            transition(self.session, task, TaskStatus.CANCELLED, message="cancelled by delete/cleanup")
        return task

    def _delete_files(self, task: Task) -> list[str]:
        return self.storage.delete_prefix(f"{OUTPUT_PREFIX[TaskType(task.task_type)]}/{task.id}")


def _after(start: datetime, seconds: float | None) -> datetime | None:
    return start + timedelta(seconds=seconds) if seconds else None


def _pt(value: str | None) -> ProviderType | None:
    return ProviderType(value) if value else None
