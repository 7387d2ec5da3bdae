"""Time limits on tasks: the queue-wait deadline, the run timeout, and retention.

- Queue-wait deadline (``queue_deadline_at``): a task that has not started by then is never run; the claim refuses
  it and it becomes CANCELLED with ``error_category`` QUEUE_TIMEOUT — at once when its message comes up, or at
  the reaper's next sweep when its message is far back in the queue or lost.
- Run timeout (``run_timeout_seconds``, per attempt): the provider's next ``ctx.check_cancelled()`` raises and the
  task FAILS with TIMEOUT (never retried). A provider stuck in a call that never checks is failed by the reaper
  once the timeout plus a grace has passed; its late outcome is then discarded (the lease is gone).
- Retention (``expires_at`` = finish + ``tasks.retention_seconds``): expired tasks answer 410 Gone; the reaper
  deletes their files and stamps ``purged_at``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from atelier.core.errors import GoneError, InvalidInputError
from atelier.core.time import utcnow
from atelier.storage.backend import StorageBackend
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import OUTPUT_PREFIX, ErrorCategory, TaskStatus, TaskType
from atelier.tasks.models import Task
from atelier.tasks.transitions import transition

OVERRUN_GRACE_SECONDS = 5.0
CONFIG_KEYS = ("queue_timeout_seconds", "run_timeout_seconds")


def limits_from(config: dict[str, Any] | None, defaults: dict[str, float | None]) -> dict[str, float | None]:
    """``queue_timeout_seconds``/``run_timeout_seconds`` of a task: its ``config`` values, else the settings'."""
    chosen: dict[str, float | None] = {}
    for key in CONFIG_KEYS:
        value = (config or {}).get(key, defaults[key])
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise InvalidInputError(f"{key} must be a positive number of seconds", loc=("body", "config", key))
        chosen[key] = float(value) if value is not None else None
    return chosen


def _lock(stmt: Any, session: Session) -> Any:
    return stmt.with_for_update(skip_locked=True) if session.get_bind().dialect.name == "postgresql" else stmt


def _queue_timeout_message(task: Task) -> str:
    waited = (task.queue_deadline_at - task.created_at).total_seconds() if task.queue_deadline_at else 0.0
    return f"not started within its queue-wait deadline ({waited:g} s)"


def expire_one(session: Session, task_id: uuid.UUID, now: datetime) -> bool:
    """Cancel one task whose queue-wait deadline passed before it started (its message just came up)."""
    task = session.get(Task, task_id, with_for_update=True)
    if not _overdue(task, now):
        return False
    assert task is not None
    transition(
        session, task, TaskStatus.CANCELLED, message=_queue_timeout_message(task), category=ErrorCategory.QUEUE_TIMEOUT
    )
    return True


def _overdue(task: Task | None, now: datetime) -> bool:
    return (
        task is not None
        and task.status == TaskStatus.PENDING.value
        and task.started_at is None
        and task.queue_deadline_at is not None
        and task.queue_deadline_at <= now
    )


def expire_overdue(session: Session, now: datetime, limit: int) -> int:
    """Cancel (QUEUE_TIMEOUT) up to ``limit`` tasks that never started before their queue-wait deadline."""
    stmt = (
        select(Task)
        .where(
            Task.status == TaskStatus.PENDING.value,
            Task.started_at.is_(None),
            Task.queue_deadline_at.is_not(None),
            Task.queue_deadline_at <= now,
        )
        .limit(limit)
    )
    tasks = session.scalars(_lock(stmt, session)).all()
    for task in tasks:
        message = _queue_timeout_message(task)
        transition(session, task, TaskStatus.CANCELLED, message=message, category=ErrorCategory.QUEUE_TIMEOUT)
    return len(tasks)


def fail_overruns(session: Session, now: datetime, limit: int) -> int:
    """Fail (TIMEOUT) running attempts past their run timeout plus a grace (their provider never checked)."""
    stmt = select(Task).where(
        Task.status == TaskStatus.EXECUTING.value,
        Task.run_timeout_seconds.is_not(None),
        Task.attempt_started_at.is_not(None),
    )
    failed = 0
    for task in session.scalars(_lock(stmt.limit(limit), session)).all():
        assert task.run_timeout_seconds is not None and task.attempt_started_at is not None
        if task.attempt_started_at + timedelta(seconds=task.run_timeout_seconds + OVERRUN_GRACE_SECONDS) > now:
            continue
        message = f"attempt exceeded its run timeout of {task.run_timeout_seconds:g} s (worker did not stop)"
        transition(session, task, TaskStatus.FAILED, message=message, category=ErrorCategory.TIMEOUT)
        failed += 1
    return failed


def purge_expired(session: Session, storage: StorageBackend, now: datetime, limit: int) -> int:
    """Delete the files of up to ``limit`` expired tasks and stamp ``purged_at`` (rows stay: reads answer 410)."""
    stmt = select(Task).where(Task.expires_at.is_not(None), Task.expires_at <= now, Task.purged_at.is_(None))
    tasks = session.scalars(_lock(stmt.order_by(Task.expires_at).limit(limit), session)).all()
    for task in tasks:
        TenantStorage(storage, task.tenant_id).delete_prefix(f"{OUTPUT_PREFIX[TaskType(task.task_type)]}/{task.id}")
        task.purged_at = now
    return len(tasks)


def check_not_expired(task: Any, now: datetime | None = None) -> None:
    """Raise 410 Gone for a task past its retention (``task``: an ORM row or a plain record)."""
    expires = task.expires_at
    if expires is not None and expires <= (now or utcnow()):
        raise GoneError(
            f"task {task.id} expired at {expires.isoformat()}; its results were purged",
            details={"expires_at": expires.isoformat()},
        )
