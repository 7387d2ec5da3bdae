"""delivery: webhook outbox and deliveries, deadlines, retention

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 17:51:39.865197
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import atelier.core.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply."""
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("workflow_id", sa.Uuid(), nullable=True),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("lease_until", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retry_until", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_webhook_deliveries_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_webhook_deliveries_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_webhook_deliveries_webhook_id")),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_deliveries_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_webhook_deliveries_target", ["target", "state", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_workflow_id"), ["workflow_id"], unique=False)

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", atelier.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_excerpt", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_attempts_delivery_id"), ["delivery_id"], unique=False)

    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_pending", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index(
            "ix_task_events_webhook_pending",
            ["id"],
            unique=False,
            postgresql_where=sa.text("webhook_pending = true"),
            sqlite_where=sa.text("webhook_pending = 1"),
        )

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue_deadline_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("run_timeout_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("attempt_started_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purged_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("expires_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_tasks_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_completed_at"), ["completed_at"], unique=False)
        batch_op.create_index("ix_tasks_queue_order", ["status", "queue_name", "priority", "created_at"], unique=False)
        batch_op.create_index("ix_tasks_tenant_status", ["tenant_id", "status"], unique=False)


def downgrade() -> None:
    """Revert."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_tenant_status")
        batch_op.drop_index("ix_tasks_queue_order")
        batch_op.drop_index(batch_op.f("ix_tasks_completed_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_expires_at"))
        batch_op.drop_column("expires_at")
        batch_op.drop_column("purged_at")
        batch_op.drop_column("attempt_started_at")
        batch_op.drop_column("run_timeout_seconds")
        batch_op.drop_column("queue_deadline_at")

    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_task_events_webhook_pending",
            postgresql_where=sa.text("webhook_pending = true"),
            sqlite_where=sa.text("webhook_pending = 1"),
        )
        batch_op.drop_column("webhook_pending")

    with op.batch_alter_table("webhook_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_attempts_delivery_id"))

    op.drop_table("webhook_attempts")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_workflow_id"))
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_task_id"))
        batch_op.drop_index("ix_webhook_deliveries_target")
        batch_op.drop_index("ix_webhook_deliveries_due")

    op.drop_table("webhook_deliveries")
