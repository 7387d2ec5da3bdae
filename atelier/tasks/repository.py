"""Every query on tasks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

from sqlalchemy import Connection, Select, bindparam, or_, select
from sqlalchemy.orm import Session

from atelier.tasks.enums import TaskStatus, TaskType
from atelier.tasks.models import Task
from atelier.tasks.queue import QUEUE_AHEAD


@dataclass(frozen=True)
class TaskFilters:
    """List filters of the Tasks API (all optional, combined with AND)."""

    status: TaskStatus | None = None
    task_type: TaskType | None = None
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    workflow_id: str | None = None
    include_deleted: bool = True


# Built once: generating the cache key of a statement over ~50 columns costs more than running it.
_BY_ID = select(Task).where(Task.id == bindparam("task_id"), Task.tenant_id == bindparam("tenant"))
_BY_ID_FOR_UPDATE = _BY_ID.with_for_update()
_RECORD_BY_ID = select(*Task.__table__.c).where(Task.id == bindparam("task_id"), Task.tenant_id == bindparam("tenant"))
_RECORD_WITH_AHEAD = _RECORD_BY_ID.add_columns(QUEUE_AHEAD)


def get_for_tenant(session: Session, tenant: str, task_id: uuid.UUID, *, for_update: bool = False) -> Task | None:
    """The task if it exists and belongs to ``tenant``."""
    stmt = _BY_ID_FOR_UPDATE if for_update else _BY_ID
    return session.execute(stmt, {"task_id": task_id, "tenant": tenant}).scalar_one_or_none()


def read_record(
    conn: Connection, tenant: str, task_id: uuid.UUID, *, with_ahead: bool = False
) -> SimpleNamespace | None:
    """The task's columns as a plain record, read without an ORM session (the hot status-read path).

    ``with_ahead``: the record also has ``queue_ahead``, the queue position of a PENDING task (None otherwise).
    """
    stmt = _RECORD_WITH_AHEAD if with_ahead else _RECORD_BY_ID
    row = conn.execute(stmt, {"task_id": task_id, "tenant": tenant}).mappings().first()
    return SimpleNamespace(**row) if row is not None else None


def _filtered(tenant: str, f: TaskFilters) -> Select[Task]:
    stmt = select(Task).where(Task.tenant_id == tenant)
    for column, value in (
        (Task.status, f.status),
        (Task.task_type, f.task_type),
        (Task.origin_instance, f.origin_instance),
        (Task.origin_zone, f.origin_zone),
        (Task.origin_tenant_id, f.origin_tenant_id),
        (Task.workflow_id, f.workflow_id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if not f.include_deleted:
        stmt = stmt.where(Task.is_deleted.is_(False))
    return stmt


def list_for_tenant(session: Session, tenant: str, filters: TaskFilters, *, limit: int, skip: int) -> Sequence[Task]:
    """Newest first, with limit/skip pagination."""
    stmt = _filtered(tenant, filters).order_by(Task.created_at.desc(), Task.id.desc()).offset(skip).limit(limit)
    return session.execute(stmt).scalars().all()


def recoverable(session: Session, *, stale_before: datetime | None) -> Sequence[Task]:
    """PENDING tasks (all of them) and EXECUTING tasks whose lease expired before ``stale_before``."""
    stmt = select(Task).where(Task.is_deleted.is_(False), Task.status == TaskStatus.PENDING.value)
    pending = list(session.execute(stmt).scalars())
    if stale_before is None:
        return pending
    stale = select(Task).where(
        Task.status == TaskStatus.EXECUTING.value,
        Task.lease_expires_at < stale_before,
        Task.is_deleted.is_(False),
    )
    return pending + list(session.execute(stale).scalars())


def stale_pending(session: Session, *, now: datetime, dispatched_before: datetime, limit: int) -> Sequence[Task]:
    """Due PENDING tasks whose last publish is older than ``dispatched_before`` (their message may be lost)."""
    stmt = (
        select(Task)
        .where(
            Task.status == TaskStatus.PENDING.value,
            Task.is_deleted.is_(False),
            or_(Task.not_before.is_(None), Task.not_before <= now),
            or_(Task.dispatched_at.is_(None), Task.dispatched_at < dispatched_before),
        )
        .order_by(Task.priority.desc(), Task.created_at)
        .limit(limit)
    )
    return session.execute(stmt).scalars().all()


def expired_leases(session: Session, *, now: datetime, limit: int) -> Sequence[Task]:
    """EXECUTING tasks whose lease ran out: their worker stopped heart-beating (killed, frozen, cut off)."""
    stmt = (
        select(Task)
        .where(Task.status == TaskStatus.EXECUTING.value, Task.lease_expires_at < now)
        .order_by(Task.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.execute(stmt).scalars().all()
