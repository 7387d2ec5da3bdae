"""The one door for task status changes: legal edges, timestamps and the event trail.

Nothing else in the code base assigns ``Task.status`` (a test walks the AST to keep it so). Both ORM-level
transitions and the atomic claim statement live here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    case,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from atelier.core.db import DriverStatement, JSONType, statement_connection
from atelier.core.errors import ConflictError
from atelier.core.periodic import Signal
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
    """Append one event to the task's trail (same unit of work as the change it records).

    Status and creation events of a task with a ``webhook_url`` are flagged for the webhook outbox.
    """
    notify = bool(task.webhook_url) and event_type in WEBHOOK_EVENTS
    _insert_event(session, task.id, task.tenant_id, event_type, task.status, message, data, notify=notify)
    if notify:
        session.info[WEBHOOK_PENDING_INFO] = True  # the session's after-commit hook fires WEBHOOK_COMMITTED


_EVENT = insert(TaskEvent)
WEBHOOK_EVENTS = frozenset({EventType.TASK_CREATED, EventType.TASK_STATUS})  # what webhooks receive
# Fired in this process after a flagged event committed: wakes the webhook loop (other processes poll).
WEBHOOK_COMMITTED = Signal()
WEBHOOK_PENDING_INFO = "atelier_webhook_pending"


def install_webhook_signal(factory: sessionmaker[Session]) -> None:
    """Fire ``WEBHOOK_COMMITTED`` after a session of ``factory`` committed a flagged event."""

    def after_commit(session: Session) -> None:
        if not session.in_nested_transaction() and session.info.pop(WEBHOOK_PENDING_INFO, False):
            WEBHOOK_COMMITTED.fire()

    def after_rollback(session: Session) -> None:
        if not session.in_nested_transaction():
            session.info.pop(WEBHOOK_PENDING_INFO, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)


# Called (same session, same transaction) when a task that belongs to a workflow reaches a terminal status.
TERMINAL_HOOKS: list[Callable[[Session, Task], None]] = []


def _insert_event(
    session: Session | Connection,
    task_id: uuid.UUID,
    tenant: str,
    event_type: EventType,
    status: str | None,
    message: str | None,
    data: dict[str, Any] | None,
    *,
    notify: bool = False,
) -> None:
    # A Core insert (after autoflush of pending rows): no unit-of-work bookkeeping for an append-only row.
    row = {"task_id": task_id, "tenant_id": tenant, "event_type": event_type.value, "status": status}
    extra = {"message": message, "data": data, "created_at": utcnow(), "webhook_pending": notify}
    session.execute(_EVENT, {**row, **extra})


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
        task.expires_at = expiry(session, now)
    elif to is S.PENDING:
        _requeue(task, current, not_before, message, category)
        task.expires_at = None
    elif to is S.EXECUTING and task.started_at is None:
        task.started_at = now
    record_event(session, task, EventType.TASK_STATUS, message, {"from": current.value, "to": to.value})
    if to in TERMINAL_STATUSES and task.workflow_id:
        for hook in TERMINAL_HOOKS:
            hook(session, task)


def expiry(session: Session, finished: datetime) -> datetime | None:
    """When a task finishing at ``finished`` expires (``tasks.retention_seconds`` of the session's runtime)."""
    runtime = session.info.get("runtime")
    retention = runtime.settings.tasks.retention_seconds if runtime is not None else None
    return finished + timedelta(seconds=retention) if retention else None


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


# What a worker needs from the claimed row (returning all ~50 columns cost more to transfer and decode).
CLAIM_COLUMNS = tuple(
    Task.__table__.c[name]
    for name in (
        "id",
        "tenant_id",
        "task_type",
        "status",
        "provider_type",
        "provider_config",
        "fallback_provider_type",
        "fallback_provider_config",
        "fallback_active",
        "active_provider_capabilities",
        "task_data",
        "config",
        "attempt",
        "updated_at",
        "service_requests",
        "service_task_id",
        "is_resumed",
        "resume_attempt_count",
        "workflow_id",
        "webhook_url",
        "run_timeout_seconds",
        "created_at",  # the worker's queue-wait metric
    )
)


def _claim_statement() -> Any:
    """The claim UPDATE, built once with bind parameters (building it costs more than running it)."""
    now: Any = bindparam("p_now")
    grace: Any = bindparam("p_due_before")
    expired = and_(
        Task.status == S.EXECUTING.value,
        Task.lease_expires_at < now,
        Task.resume_attempt_count < bindparam("p_max_resumes"),
    )
    # A small grace: broker timers may fire an ETA message a few milliseconds before ``not_before``.
    # A task that never started and is past its queue-wait deadline is not run (it is cancelled instead).
    in_time = or_(Task.queue_deadline_at.is_(None), Task.queue_deadline_at > now, Task.started_at.is_not(None))
    due = and_(Task.status == S.PENDING.value, or_(Task.not_before.is_(None), Task.not_before <= grace), in_time)
    resumed = Task.status == S.EXECUTING.value
    # Only the task's latest message may claim it (``celery_task_id``): a re-prioritised or re-published task's
    # older messages are dropped, so a lowered priority really waits. Without a message id, any message may.
    latest = func.coalesce(bindparam("p_message_id", type_=String), Task.celery_task_id) == Task.celery_task_id
    return (
        update(Task)
        .where(
            Task.id == bindparam("p_task_id"),
            Task.is_deleted.is_(False),
            Task.cancel_requested.is_(False),
            or_(due, expired),
            latest,
        )
        .values(
            status=S.EXECUTING.value,
            lease_owner=bindparam("p_owner"),
            lease_expires_at=bindparam("p_lease"),
            heartbeat_at=now,
            attempt_started_at=now,
            executor_type="celery",
            executor_instance=bindparam("p_owner"),
            attempt=Task.attempt + 1,
            started_at=case((Task.started_at.is_(None), now), else_=Task.started_at),
            is_resumed=case((resumed, True), else_=Task.is_resumed),
            resume_attempt_count=case((resumed, Task.resume_attempt_count + 1), else_=Task.resume_attempt_count),
            last_resume_attempt=case((resumed, now), else_=Task.last_resume_attempt),
            updated_at=now,
        )
        .returning(*CLAIM_COLUMNS)
    )


def _with_event(stmt: Any, status: S, name: str) -> Any:
    """``stmt`` (an UPDATE … RETURNING) and its TASK_STATUS event as one PostgreSQL statement.

    A data-modifying CTE: the event row is inserted from the updated row in the same statement, so the
    pair is atomic without a transaction block, i.e. one round trip in autocommit mode instead of five
    (BEGIN, UPDATE, INSERT, COMMIT and the pool's ping).
    """
    changed = stmt.cte(name)
    event = insert(TaskEvent).from_select(
        ["task_id", "tenant_id", "event_type", "status", "message", "data", "created_at", "webhook_pending"],
        select(
            changed.c.id,
            changed.c.tenant_id,
            literal(EventType.TASK_STATUS.value),
            literal(status.value),
            bindparam("p_message"),
            bindparam("p_event_data", type_=JSONType),
            bindparam("p_now"),
            changed.c.webhook_url.is_not(None),
        ),
    )
    return select(changed).add_cte(event.cte(f"{name}_event"))


_CLAIM = _claim_statement()
_CLAIM_PG = DriverStatement(_with_event(_CLAIM, S.EXECUTING, "claimed"), json_params=("p_event_data",))


def single_statement_events(engine: Engine) -> bool:
    """Whether a change and its event go in one statement here (PostgreSQL's data-modifying CTEs)."""
    return engine.dialect.name == "postgresql"


def claim(
    engine: Engine,
    task_id: uuid.UUID,
    worker: str,
    lease_seconds: float,
    max_resumes: int,
    message_id: str | None = None,
) -> SimpleNamespace | None:
    """Atomically take the task for ``worker``; None when it is not claimable (duplicate or stale message).

    Claimable: PENDING and due, or EXECUTING with an expired lease (its worker died) while the resume
    budget lasts. One UPDATE decides, so two workers can never both run a task; it returns the claimed row
    (a plain record: Core, no ORM session, this is the hot path of every run).
    """
    now = utcnow()
    params = {
        "p_task_id": task_id,
        "p_now": now,
        "p_due_before": now + timedelta(seconds=ETA_GRACE_SECONDS),
        "p_max_resumes": max_resumes,
        "p_owner": worker,
        "p_lease": now + timedelta(seconds=lease_seconds),
        "p_message_id": message_id,
    }
    message, data = f"claimed by {worker}", {"to": S.EXECUTING.value}
    if single_statement_events(engine):
        claimed = _CLAIM_PG.first(engine, {**params, "p_message": message, "p_event_data": data})
        return None if claimed is None else SimpleNamespace(**claimed)
    with statement_connection(engine) as conn:
        row = conn.execute(_CLAIM, params).mappings().first()
        if row is None:
            return None
        notify = row["webhook_url"] is not None
        _insert_event(
            conn, task_id, row["tenant_id"], EventType.TASK_STATUS, S.EXECUTING.value, message, data, notify=notify
        )
    return SimpleNamespace(**row)


_COMPLETE = (
    update(Task)
    .where(
        Task.id == bindparam("p_task_id"),
        Task.status == S.EXECUTING.value,
        Task.lease_owner == bindparam("p_owner"),
        Task.updated_at == bindparam("p_version"),
        Task.cancel_requested.is_(False),
    )
    .values(
        status=S.COMPLETED.value,
        completed_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
        progress=100.0,
        error_category=None,
        lease_owner=None,
        lease_expires_at=None,
        not_before=None,
        task_data=bindparam("p_task_data", type_=Task.__table__.c.task_data.type),
        service_requests=bindparam("p_requests", type_=Task.__table__.c.service_requests.type),
        service_task_id=bindparam("p_service_task_id"),
        expires_at=bindparam("p_expires_at"),
    )
    .returning(Task.id, Task.tenant_id, Task.webhook_url)
    .execution_options(synchronize_session=False)
)
_COMPLETE_PG = DriverStatement(
    _with_event(_COMPLETE, S.COMPLETED, "completed"), json_params=("p_event_data", "p_task_data", "p_requests")
)

WORKER_STATEMENTS = (_CLAIM_PG, _COMPLETE_PG)  # run for every task: compiled before a worker forks (worker.py)


def complete_unchanged(
    engine: Engine,
    task_id: uuid.UUID,
    owner: str,
    version: datetime,
    *,
    task_data: dict[str, Any],
    service_requests: list[dict[str, Any]],
    service_task_id: str | None,
    retention_seconds: float | None = None,
) -> bool:
    """EXECUTING → COMPLETED in one statement, only if nothing wrote the row since ``version`` (the claim).

    The same effects as ``transition(…, COMPLETED)``; when it returns False the caller takes the general
    path (load, check, ``transition``), which handles every other case.
    """
    now = utcnow()
    params = {
        "p_task_id": task_id,
        "p_owner": owner,
        "p_version": version,
        "p_now": now,
        "p_task_data": task_data,
        "p_requests": service_requests,
        "p_service_task_id": service_task_id,
        "p_expires_at": now + timedelta(seconds=retention_seconds) if retention_seconds else None,
    }
    transition_data = {"from": S.EXECUTING.value, "to": S.COMPLETED.value}
    if single_statement_events(engine):
        extra = {"p_message": "completed", "p_event_data": transition_data}
        return _COMPLETE_PG.first(engine, {**params, **extra}) is not None
    with statement_connection(engine) as conn:
        row = conn.execute(_COMPLETE, params).first()
        if row is None:
            return False
        tenant, notify = row.tenant_id, row.webhook_url is not None
        _insert_event(
            conn, task_id, tenant, EventType.TASK_STATUS, S.COMPLETED.value, "completed", transition_data, notify=notify
        )
    return True
