"""Alembic on PostgreSQL: from empty, step by step down (0006 → … → 0001), up again, down to base."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

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


def _indexes(url: str, table: str) -> dict[str, tuple[bool, tuple[str, ...]]]:
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        found = {
            str(i["name"]): (bool(i["unique"]), tuple(str(c) for c in i["column_names"]))
            for i in inspector.get_indexes(table)
        }
        for constraint in inspector.get_unique_constraints(table):
            found[str(constraint["name"])] = (True, tuple(constraint["column_names"]))
        return found
    finally:
        engine.dispose()


def _revision(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


DELIVERY_COLUMNS = {"queue_deadline_at", "run_timeout_seconds", "attempt_started_at", "purged_at", "expires_at"}


def test_upgrade_downgrade_upgrade(pg_url: str) -> None:
    upgrade(pg_url)
    assert _revision(pg_url) == "0007"
    assert "training_tasks" in _tables(pg_url)
    assert _indexes(pg_url, "training_tasks")["ix_training_tasks_status_lease"] == (
        False,
        ("status", "lease_expires_at"),
    )
    downgrade(pg_url, "-1")  # 0007 → 0006: the training tables go
    assert _revision(pg_url) == "0006"
    assert "training_tasks" not in _tables(pg_url)
    engine = create_engine(pg_url)
    try:
        assert "training_id" not in {c["name"] for c in inspect(engine).get_columns("webhook_deliveries")}
    finally:
        engine.dispose()
    assert _indexes(pg_url, "workflows")["ix_workflows_tenant_name"] == (False, ("tenant_id", "name"))
    downgrade(pg_url, "-1")  # 0006 → 0005: the monitoring indexes go
    assert "ix_tasks_tenant_priority" not in _indexes(pg_url, "tasks")
    assert _revision(pg_url) == "0005"
    assert {"webhook_deliveries", "webhook_attempts"} <= _tables(pg_url) and _columns(pg_url) >= DELIVERY_COLUMNS
    assert _indexes(pg_url, "task_events")["ix_task_events_webhook_pending"] == (False, ("id",))
    assert _indexes(pg_url, "tasks")["ix_tasks_queue_order"] == (
        False,
        ("status", "queue_name", "priority", "created_at"),
    )
    downgrade(pg_url, "-1")  # 0005 → 0004: the delivery tables and columns go
    assert _revision(pg_url) == "0004"
    assert not {"webhook_deliveries", "webhook_attempts"} & _tables(pg_url)
    assert not DELIVERY_COLUMNS & _columns(pg_url)
    assert "ix_task_events_webhook_pending" not in _indexes(pg_url, "task_events")
    assert {"workflows", "workflow_steps", "idempotency_keys"} <= _tables(pg_url)
    indexes = _indexes(pg_url, "idempotency_keys")
    assert indexes["uq_idempotency_keys_tenant_key"] == (True, ("tenant_id", "key"))
    assert indexes["ix_idempotency_keys_expires_at"] == (False, ("expires_at",))
    downgrade(pg_url, "-1")  # 0004 → 0003: the key table goes, the workflow tables stay
    assert _revision(pg_url) == "0003"
    tables = _tables(pg_url)
    assert "idempotency_keys" not in tables and {"workflows", "workflow_steps"} <= tables
    downgrade(pg_url, "-1")  # 0003 → 0002: the workflow tables go, the tasks table keeps 0002's column
    assert _revision(pg_url) == "0002"
    assert not {"workflows", "workflow_steps"} & _tables(pg_url)
    assert "dispatched_at" in _columns(pg_url)
    downgrade(pg_url, "-1")  # 0002 → 0001
    columns = _columns(pg_url)
    assert "dispatched_at" not in columns and "lease_expires_at" in columns
    upgrade(pg_url)
    assert _revision(pg_url) == "0007"
    assert "dispatched_at" in _columns(pg_url) and {"workflows", "idempotency_keys"} <= _tables(pg_url)
    assert "webhook_deliveries" in _tables(pg_url) and _columns(pg_url) >= DELIVERY_COLUMNS
    downgrade(pg_url, "base")
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()
