"""On PostgreSQL a claim or completion and its event are one autocommit statement (no BEGIN/COMMIT)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import StatementError

from atelier.core.db import (
    DriverStatement,
    JSONType,
    UTCDateTime,
    read_connection,
    session_scope,
    statement_connection,
)
from atelier.tasks.models import Task, TaskEvent
from atelier.tasks.transitions import claim, complete_unchanged
from tests.api.helpers import runtime_of
from tests.conftest import AppFactory, b64_png

pytestmark = pytest.mark.integration


def test_claim_and_complete_are_one_statement_each_with_their_events(app_factory: AppFactory, pg_url: str) -> None:
    api = app_factory(worker=False, database={"url": pg_url})
    task_id = uuid.UUID(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": b64_png(), "mode": "pad", "aspect_ratio": 1.0})["id"]
    )
    engine = runtime_of(api).engine
    statements: list[str] = []
    me = threading.get_ident()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == me:  # not the reaper's or the webhook loop's statements on the same engine
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with statement_connection(engine) as conn:
            claimed = claim(conn, task_id, "w1", 60, 3)
        assert claimed is not None and claimed.status == "EXECUTING"
        # Compiled once and run as driver SQL: the row still decodes like the ORM's (UUID, aware time, JSON).
        assert isinstance(claimed.id, uuid.UUID) and claimed.id == task_id
        assert claimed.updated_at.tzinfo is UTC and claimed.created_at.tzinfo is UTC
        assert claimed.task_data["mode"] == "pad" and claimed.attempt == 1
        assert len(statements) == 1 and statements[0].lstrip().startswith("WITH claimed")
        with statement_connection(engine) as conn:
            assert claim(conn, task_id, "w2", 60, 3) is None  # a duplicate delivery changes nothing
        with statement_connection(engine) as conn:
            done = complete_unchanged(
                conn,
                task_id,
                "w1",
                claimed.updated_at,
                task_data={"x": 1, "nested": {"y": [1, 2]}},
                service_requests=[{"url": "local"}],
                service_task_id=None,
            )
        assert done
        assert len(statements) == 3
    finally:
        event.remove(engine, "before_cursor_execute", count)

    with session_scope(runtime_of(api).sessions) as session:
        events = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)).all()
        trail = [(e.event_type, e.status, e.message) for e in events]
    assert trail[-2:] == [("TASK_STATUS", "EXECUTING", "claimed by w1"), ("TASK_STATUS", "COMPLETED", "completed")]
    assert events[-1].data == {"from": "EXECUTING", "to": "COMPLETED"}
    with session_scope(runtime_of(api).sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None and task.task_data == {"x": 1, "nested": {"y": [1, 2]}}
        assert task.service_requests == [{"url": "local"}] and task.progress == 100.0
    assert api.get(str(task_id))["status"] == "COMPLETED"


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_driver_statement_gives_the_rows_sqlalchemy_would(pg_url: str, dialect: str) -> None:
    from sqlalchemy import bindparam, create_engine, literal, select

    engine = create_engine(pg_url if dialect == "postgresql" else "sqlite://")
    stmt = DriverStatement(
        select(
            literal(7).label("seven"),
            bindparam("p_doc", type_=JSONType).label("doc"),
            bindparam("p_n").label("n"),
            bindparam("p_at", type_=UTCDateTime).label("at"),
        ),
        json_params=("p_doc",),
    )
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    try:
        with statement_connection(engine) as conn:
            row = stmt.first(conn, {"p_doc": {"a": [1, "b"]}, "p_n": 3, "p_at": at})
            assert row == {"seven": 7, "doc": {"a": [1, "b"]}, "n": 3, "at": at}
            assert row["at"].tzinfo is UTC
            # compiled SQL would silently send NULL for a forgotten parameter, and a naive time as local time
            with pytest.raises((TypeError, StatementError), match="p_n"):
                stmt.first(conn, {"p_doc": None, "p_at": at})
            with pytest.raises((ValueError, StatementError), match="naive datetime refused"):
                stmt.first(conn, {"p_doc": None, "p_n": 1, "p_at": at.replace(tzinfo=None)})
    finally:
        engine.dispose()


def test_task_reads_run_without_a_transaction_and_leave_none_behind(app_factory: AppFactory, pg_url: str) -> None:
    api = app_factory(worker=False, database={"url": pg_url})
    task = api.create({"task_type": "IMAGE_ADJUSTER", "input_image": b64_png(), "aspect_ratio": 1.0})
    engine = runtime_of(api).engine

    def two_clocks(conn: Any) -> tuple[datetime, datetime]:
        # now() is the start of the current transaction: equal twice inside one, different in autocommit
        return conn.exec_driver_sql("SELECT now()").scalar_one(), conn.exec_driver_sql("SELECT now()").scalar_one()

    with engine.connect() as conn:
        first, second = two_clocks(conn)
        assert first == second  # the control: an ordinary connection opens a transaction (BEGIN … ROLLBACK)
    with read_connection(engine) as conn:
        first, second = two_clocks(conn)
        assert first != second  # no BEGIN, so no ROLLBACK when the connection goes back to the pool
    with engine.connect() as conn:  # the pooled connection is back in transactional mode
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
        first, second = two_clocks(conn)
        assert first == second
    read = api.get(task["id"])  # the read and the PENDING task's queue estimate go through read_connection
    assert read["status"] == "PENDING" and read["queue_position"] == 0


def test_a_pending_read_and_its_queue_position_are_one_statement(app_factory: AppFactory, pg_url: str) -> None:
    # No background loops (webhooks, reaper): every statement counted below is one of the reads.
    off = {"enabled": False}
    api = app_factory(worker=False, database={"url": pg_url}, webhooks=off, reaper=off)
    body = {"task_type": "IMAGE_ADJUSTER", "input_image": b64_png(), "aspect_ratio": 1.0}
    first, second, third = (api.create(body) for _ in range(3))
    urgent = api.create({**body, "priority": 5})
    engine = runtime_of(api).engine
    api.get(third["id"])  # the queue's run-time statistics are read once, then cached for a few seconds
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        positions = [api.get(t["id"])["queue_position"] for t in (urgent, first, second, third)]
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert positions == [0, 1, 2, 3]
    assert len(statements) == 4, statements  # one per read: the row with its position
