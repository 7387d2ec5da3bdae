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


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(pg_url: str) -> None:
    upgrade(pg_url)
    assert {"workflows", "workflow_steps"} <= _tables(pg_url)
    downgrade(pg_url, "-1")  # 0003 → 0002: the workflow tables go, the tasks table keeps 0002's column
    assert not {"workflows", "workflow_steps"} & _tables(pg_url)
    assert "dispatched_at" in _columns(pg_url)
    downgrade(pg_url, "-1")  # 0002 → 0001
    columns = _columns(pg_url)
    assert "dispatched_at" not in columns and "lease_expires_at" in columns
    upgrade(pg_url)
    assert "dispatched_at" in _columns(pg_url) and "workflows" in _tables(pg_url)
    downgrade(pg_url, "base")
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()
