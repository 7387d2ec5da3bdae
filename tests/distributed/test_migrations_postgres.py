"""Alembic on PostgreSQL: from empty, one step down, and up again."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from atelier.core.migrate import downgrade, upgrade

pytestmark = pytest.mark.integration


def _columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("tasks")}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(pg_url: str) -> None:
    upgrade(pg_url)
    assert "dispatched_at" in _columns(pg_url)
    downgrade(pg_url, "-1")
    columns = _columns(pg_url)
    assert "dispatched_at" not in columns and "lease_expires_at" in columns
    upgrade(pg_url)
    assert "dispatched_at" in _columns(pg_url)
    downgrade(pg_url, "base")
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()
