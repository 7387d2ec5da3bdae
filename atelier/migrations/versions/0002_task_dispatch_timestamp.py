"""task dispatch timestamp

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 13:12:53.044729
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import atelier.core.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", atelier.core.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert."""
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("dispatched_at")
