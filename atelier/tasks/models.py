"""ORM models of tasks and their lifecycle events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, Uuid, false, text
from sqlalchemy.orm import Mapped, mapped_column

from atelier.core.db import Base, JSONType, UTCDateTime
from atelier.core.time import utcnow


class Task(Base):
    """One unit of work. Common columns are typed; type-specific inputs/outputs live in ``task_data``."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(100), index=True)
    task_type: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(20), default="PENDING")  # indexed with id: ix_tasks_status_id
    priority: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    task_data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    provider_type: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    provider_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    active_provider_capabilities: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    fallback_provider_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    fallback_provider_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    fallback_provider_capabilities: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    fallback_active: Mapped[bool] = mapped_column(Boolean, default=False)
    queue_name: Mapped[str] = mapped_column(String(100), default="inference")
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)

    origin_instance: Mapped[str] = mapped_column(String(255), default="unknown", index=True)
    origin_zone: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    origin_tenant_id: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    origin_reference: Mapped[str | None] = mapped_column(String(512), nullable=True)
    workflow_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)

    errors: Mapped[list[str]] = mapped_column(JSONType, default=list)
    error_category: Mapped[str | None] = mapped_column(String(40), nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    executor_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    executor_instance: Mapped[str | None] = mapped_column(String(255), nullable=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    service_task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    service_requests: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    is_resumed: Mapped[bool] = mapped_column(Boolean, default=False)
    resume_attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    last_resume_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    is_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    # Delivery controls: a queue-wait deadline (never started by then → CANCELLED, QUEUE_TIMEOUT), a run timeout
    # per attempt (→ FAILED, TIMEOUT) and the retention purge marker (files gone, reads answer 410).
    queue_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    run_timeout_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # set by each claim
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)

    __table_args__ = (
        Index("ix_tasks_tenant_created", "tenant_id", "created_at"),
        Index("ix_tasks_status_queue", "status", "queue_name"),
        Index("ix_tasks_tenant_status", "tenant_id", "status", "id"),
        Index("ix_tasks_queue_order", "status", "queue_name", "priority", "created_at"),
        # Monitoring sorts (alone for admins' fleet-wide lists, after tenant_id for a tenant's).
        # `id` last: lists break ties by id, so a page is read straight from the index (no sort of a whole group).
        Index("ix_tasks_status_id", "status", "id"),
        Index("ix_tasks_priority", "priority", "id"),
        Index("ix_tasks_tenant_priority", "tenant_id", "priority", "id"),
        Index("ix_tasks_tenant_completed", "tenant_id", "completed_at"),
    )


class TaskEvent(Base):
    """An append-only record of what happened to a task (status changes, retries, fallback…)."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(100), index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The outbox flag: set (in the statement that writes the event) when the task has a webhook; the delivery
    # relay turns flagged events into webhook deliveries and clears the flag in one transaction.
    webhook_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index(
            "ix_task_events_webhook_pending",
            "id",
            postgresql_where=text("webhook_pending = true"),
            sqlite_where=text("webhook_pending = 1"),
        ),
    )
