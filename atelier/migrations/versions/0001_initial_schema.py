"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:55:33.339562
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import atelier.core.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply."""
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=100), nullable=False),
        sa.Column("task_type", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "task_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("provider_type", sa.String(length=40), nullable=True),
        sa.Column(
            "provider_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "active_provider_capabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("fallback_provider_type", sa.String(length=40), nullable=True),
        sa.Column(
            "fallback_provider_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "fallback_provider_capabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("fallback_active", sa.Boolean(), nullable=False),
        sa.Column("queue_name", sa.String(length=100), nullable=False),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        sa.Column("origin_instance", sa.String(length=255), nullable=False),
        sa.Column("origin_zone", sa.String(length=100), nullable=True),
        sa.Column("origin_tenant_id", sa.String(length=255), nullable=True),
        sa.Column("origin_reference", sa.String(length=512), nullable=True),
        sa.Column("workflow_id", sa.String(length=64), nullable=True),
        sa.Column(
            "errors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("error_category", sa.String(length=40), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("not_before", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("executor_type", sa.String(length=100), nullable=True),
        sa.Column("executor_instance", sa.String(length=255), nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        sa.Column("service_task_id", sa.String(length=255), nullable=True),
        sa.Column(
            "service_requests",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("is_resumed", sa.Boolean(), nullable=False),
        sa.Column("resume_attempt_count", sa.Integer(), nullable=False),
        sa.Column("last_resume_attempt", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("is_deleted", sa.Boolean(), nullable=False),
        sa.Column("deleted_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_origin_instance"), ["origin_instance"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_origin_tenant_id"), ["origin_tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_origin_zone"), ["origin_zone"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_provider_type"), ["provider_type"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_status"), ["status"], unique=False)
        batch_op.create_index("ix_tasks_status_queue", ["status", "queue_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_task_type"), ["task_type"], unique=False)
        batch_op.create_index("ix_tasks_tenant_created", ["tenant_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_workflow_id"), ["workflow_id"], unique=False)

    op.create_table(
        "task_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.String(length=100), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_events_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
    )
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_events_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_task_events_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    """Revert."""
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_events_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_task_events_task_id"))

    op.drop_table("task_events")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_workflow_id"))
        batch_op.drop_index(batch_op.f("ix_tasks_tenant_id"))
        batch_op.drop_index("ix_tasks_tenant_created")
        batch_op.drop_index(batch_op.f("ix_tasks_task_type"))
        batch_op.drop_index("ix_tasks_status_queue")
        batch_op.drop_index(batch_op.f("ix_tasks_status"))
        batch_op.drop_index(batch_op.f("ix_tasks_provider_type"))
        batch_op.drop_index(batch_op.f("ix_tasks_origin_zone"))
        batch_op.drop_index(batch_op.f("ix_tasks_origin_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_tasks_origin_instance"))
        batch_op.drop_index(batch_op.f("ix_tasks_created_at"))

    op.drop_table("tasks")
