"""monitoring indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 18:48:49.724214
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_status"))
        batch_op.drop_index(batch_op.f("ix_tasks_tenant_status"))
        batch_op.create_index("ix_tasks_tenant_status", ["tenant_id", "status", "id"], unique=False)
        batch_op.create_index("ix_tasks_priority", ["priority", "id"], unique=False)
        batch_op.create_index("ix_tasks_status_id", ["status", "id"], unique=False)
        batch_op.create_index("ix_tasks_tenant_completed", ["tenant_id", "completed_at"], unique=False)
        batch_op.create_index("ix_tasks_tenant_priority", ["tenant_id", "priority", "id"], unique=False)

    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index("ix_workflows_name", ["name"], unique=False, postgresql_ops={"name": "text_pattern_ops"})
        batch_op.create_index(
            "ix_workflows_tenant_name", ["tenant_id", "name"], unique=False, postgresql_ops={"name": "text_pattern_ops"}
        )


def downgrade() -> None:
    """Revert."""
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index("ix_workflows_tenant_name", postgresql_ops={"name": "text_pattern_ops"})
        batch_op.drop_index("ix_workflows_name", postgresql_ops={"name": "text_pattern_ops"})

    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_tenant_priority")
        batch_op.drop_index("ix_tasks_tenant_completed")
        batch_op.drop_index("ix_tasks_status_id")
        batch_op.drop_index("ix_tasks_priority")
        batch_op.drop_index("ix_tasks_tenant_status")
        batch_op.create_index(batch_op.f("ix_tasks_tenant_status"), ["tenant_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_tasks_status"), ["status"], unique=False)
