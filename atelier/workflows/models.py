"""ORM models of workflows (a DAG of steps) and their steps; each started step is one task."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from atelier.core.db import Base, JSONType, UTCDateTime
from atelier.core.time import utcnow


class Workflow(Base):
    """A DAG of steps run as tasks; its status is derived by the planner from its steps."""

    __tablename__ = "workflows"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="PENDING")
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    suppress_subtask_events: Mapped[bool] = mapped_column(Boolean, default=True)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    completed_steps: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    current_step: Mapped[str | None] = mapped_column(String(255), nullable=True)
    final_step_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    final_step_result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    canvas_task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    origin_instance: Mapped[str] = mapped_column(String(100), index=True)
    origin_zone: Mapped[str | None] = mapped_column(String(50), nullable=True)
    origin_tenant_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    origin_reference: Mapped[str | None] = mapped_column(String(512), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    errors: Mapped[list[str]] = mapped_column(JSONType, default=list)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="workflow", order_by="WorkflowStep.position", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (
        Index("ix_workflows_tenant_created", "tenant_id", "created_at"),
        # Name-prefix search (LIKE 'x%'): text_pattern_ops lets PostgreSQL use the index whatever the collation.
        Index("ix_workflows_name", "name", postgresql_ops={"name": "text_pattern_ops"}),
        Index("ix_workflows_tenant_name", "tenant_id", "name", postgresql_ops={"name": "text_pattern_ops"}),
    )


class WorkflowStep(Base):
    """One node of a workflow's DAG and the task that runs it (once started)."""

    __tablename__ = "workflow_steps"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    workflow_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("workflows.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer)  # topological order
    task_type: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    provider_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    active_provider_capabilities: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    fallback_provider_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    fallback_provider_config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    fallback_provider_capabilities: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    dependencies: Mapped[list[str]] = mapped_column(JSONType, default=list)
    input_mappings: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(20), default="PENDING")
    task_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, index=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    workflow: Mapped[Workflow] = relationship(back_populates="steps")

    __table_args__ = (UniqueConstraint("workflow_id", "step_id", name="uq_workflow_steps_step"),)
