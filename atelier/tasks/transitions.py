"""The one door for task status changes: legal edges, timestamps and the event trail.

Nothing else in the code base assigns ``Task.status`` (a test walks the AST to keep it so). Both ORM-level
transitions and the atomic claim statement live here.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, update
from sqlalchemy.orm import Session

from atelier.core.errors import ConflictError
from atelier.core.time import utcnow
from atelier.tasks.enums import TERMINAL_STATUSES, ErrorCategory, EventType, TaskStatus
from atelier.tasks.models import Task, TaskEvent

S = TaskStatus
ETA_GRACE_SECONDS = 0.5
ALLOWED: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.EXECUTING, S.CANCELLED, S.FAILED}),
    S.EXECUTING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.PENDING}),
    # A finished task can be queued again by an explicit update (manual retry); COMPLETED is final.
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.COMPLETED: frozenset(),
}


class IllegalTransitionError(ConflictError):
    """A status change that the state machine does not allow (HTTP 409)."""

    code = "illegal_transition"


def can_transition(current: str, to: TaskStatus) -> bool:
    """Whether ``current → to`` is an edge of the state machine."""
    return to in ALLOWED[TaskStatus(current)]


def record_event(
    session: Session,
    task: Task,
    event_type: EventType,
    message: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one event to the task's trail (same unit of work as the change it records)."""
    session.add(
        TaskEvent(
            task_id=task.id,
            tenant_id=task.tenant_id,
            event_type=event_type.value,
            status=task.status,
            message=message,
            data=data,
        )
    )


def transition(
    session: Session,
    task: Task,
    to: TaskStatus,
    *,
    message: str | None = None,
    category: ErrorCategory | None = None,
    not_before: datetime | None = None,
) -> None:
    """Move ``task`` to ``to``: check the edge, stamp timestamps, record the event."""
    current = TaskStatus(task.status)
    if not can_transition(current, to):
        raise IllegalTransitionError(
            f"task {task.id} is {current.value}; it cannot become {to.value}",
            details={"from": current.value, "to": to.value},
        )
    now = utcnow()
    task.status = to.value
    task.updated_at = now
    if to in TERMINAL_STATUSES:
        _finish(task, to, now, message, category)
    elif to is S.PENDING:
        _requeue(task, current, not_before, message, category)
    elif to is S.EXECUTING and task.started_at is None:
        task.started_at = now
    record_event(session, task, EventType.TASK_STATUS, message, {"from": current.value, "to": to.value})


def _finish(task: Task, to: TaskStatus, now: datetime, message: str | None, category: ErrorCategory | None) -> None:
    task.completed_at = now
    task.lease_owner = None
    task.lease_expires_at = None
    task.not_before = None
    if to is S.COMPLETED:
        task.progress = 100.0
        task.error_category = None
    elif to is S.CANCELLED:
        task.error_category = (category or ErrorCategory.CANCELLED).value
        task.errors = [*(task.errors or []), message or "cancelled"]
    else:
        task.error_category = (category or ErrorCategory.INTERNAL_ERROR).value
        task.errors = [*(task.errors or []), message or "failed"]


def _requeue(
    task: Task,
    current: TaskStatus,
    not_before: datetime | None,
    message: str | None,
    category: ErrorCategory | None,
) -> None:
    task.lease_owner = None
    task.lease_expires_at = None
    task.not_before = not_before
    if current in TERMINAL_STATUSES:  # manual re-run: a fresh start
        task.completed_at = None
        task.cancel_requested = False
        task.retry_count = 0
        task.progress = 0.0
    if message:
        task.errors = [*(task.errors or []), message]
    if category:
        task.error_category = category.value


def claim(session: Session, task_id: uuid.UUID, worker: str, lease_seconds: float, max_resumes: int) -> bool:
    """Atomically take the task for ``worker``; False when it is not claimable (duplicate or stale message).

    Claimable: PENDING and due, or EXECUTING with an expired lease (its worker died) while the resume
    budget lasts. One UPDATE decides, so two workers can never both run a task.
    """
    now = utcnow()
    expired = and_(
        Task.status == S.EXECUTING.value,
        Task.lease_expires_at < now,
        Task.resume_attempt_count < max_resumes,
    )
    # A small grace: broker timers may fire an ETA message a few milliseconds before ``not_before``.
    due = and_(
        Task.status == S.PENDING.value,
        or_(Task.not_before.is_(None), Task.not_before <= now + timedelta(seconds=ETA_GRACE_SECONDS)),
    )
    resumed = Task.status == S.EXECUTING.value
    stmt = (
        update(Task)
        .where(
            Task.id == task_id,
            Task.is_deleted.is_(False),
            Task.cancel_requested.is_(False),
            or_(due, expired),
        )
        .values(
            status=S.EXECUTING.value,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            executor_type="celery",
            executor_instance=worker,
            attempt=Task.attempt + 1,
            started_at=case((Task.started_at.is_(None), now), else_=Task.started_at),
            is_resumed=case((resumed, True), else_=Task.is_resumed),
            resume_attempt_count=case((resumed, Task.resume_attempt_count + 1), else_=Task.resume_attempt_count),
            last_resume_attempt=case((resumed, now), else_=Task.last_resume_attempt),
            updated_at=now,
        )
        .returning(Task.id)
        .execution_options(synchronize_session=False)
    )
    won = session.execute(stmt).first() is not None
    if won:
        task = session.get(Task, task_id, populate_existing=True)
        assert task is not None
        record_event(session, task, EventType.TASK_STATUS, f"claimed by {worker}", {"to": S.EXECUTING.value})
    return won
