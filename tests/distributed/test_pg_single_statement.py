"""On PostgreSQL a claim or completion and its event are one autocommit statement (no BEGIN/COMMIT)."""

from __future__ import annotations

import threading
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import DataError, DBAPIError, OperationalError, StatementError

from atelier.core import db
from atelier.core.db import (
    DriverStatement,
    JSONType,
    UTCDateTime,
    read_connection,
    retry_on_disconnect,
    session_scope,
)
from atelier.tasks.models import Task, TaskEvent
from atelier.tasks.transitions import claim, complete_unchanged
from tests.api.helpers import runtime_of
from tests.conftest import AppFactory, b64_png
from tests.fakes.server import free_port

pytestmark = pytest.mark.integration


def _count_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement this thread sends from now on: prepared ones run by ``DriverStatement`` and cursors'."""
    statements: list[str] = []
    me = threading.get_ident()
    run_prepared, execute = db._execute_prepared, psycopg.Cursor.execute

    def counted_prepared(conn: Any, state: Any, key: tuple[bytes, Any], params: Any) -> Any:
        if threading.get_ident() == me:
            statements.append("prepared: " + key[0].decode().lstrip())
        return run_prepared(conn, state, key, params)

    def counted(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        # not the reaper's or the webhook loop's statements on the same engine, nor the API pool's pre-ping (";")
        if threading.get_ident() == me and str(query) != ";":
            statements.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(db, "_execute_prepared", counted_prepared)
    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    return statements


def _idle(conn: Any) -> bool:
    """A psycopg connection outside any transaction and not in autocommit mode (as the pool hands them out)."""
    return bool(conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.autocommit)


def test_claim_and_complete_are_one_statement_each_with_their_events(
    app_factory: AppFactory, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = app_factory(worker=False, database={"url": pg_url})
    task_id = uuid.UUID(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": b64_png(), "mode": "pad", "aspect_ratio": 1.0})["id"]
    )
    engine = runtime_of(api).engine
    statements = _count_statements(monkeypatch)
    claimed = claim(engine, task_id, "w1", 60, 3)
    assert claimed is not None and claimed.status == "EXECUTING"
    # Compiled once and run as driver SQL: the row still decodes like the ORM's (UUID, aware time, JSON).
    assert isinstance(claimed.id, uuid.UUID) and claimed.id == task_id
    assert claimed.updated_at.tzinfo is UTC and claimed.created_at.tzinfo is UTC
    assert claimed.task_data["mode"] == "pad" and claimed.attempt == 1
    assert len(statements) == 1 and statements[0].lstrip().startswith("prepared: WITH claimed")
    assert claim(engine, task_id, "w2", 60, 3) is None  # a duplicate delivery changes nothing
    done = complete_unchanged(
        engine,
        task_id,
        "w1",
        claimed.updated_at,
        task_data={"x": 1, "nested": {"y": [1, 2]}},
        service_requests=[{"url": "local"}],
        service_task_id=None,
    )
    assert done
    assert len(statements) == 3
    monkeypatch.undo()
    with engine.connect() as conn:  # each committed by itself: the pooled connection is idle, still transactional
        assert _idle(conn.connection.driver_connection)

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
        row = stmt.first(engine, {"p_doc": {"a": [1, "b"]}, "p_n": 3, "p_at": at})
        assert row == {"seven": 7, "doc": {"a": [1, "b"]}, "n": 3, "at": at}
        assert row["at"].tzinfo is UTC
        # compiled SQL would silently send NULL for a forgotten parameter, and a naive time as local time
        with pytest.raises((TypeError, StatementError), match="p_n"):
            stmt.first(engine, {"p_doc": None, "p_at": at})
        with pytest.raises((ValueError, StatementError), match="naive datetime refused"):
            stmt.first(engine, {"p_doc": None, "p_n": 1, "p_at": at.replace(tzinfo=None)})
    finally:
        engine.dispose()


def _backend_pids(engine: Engine, n: int) -> list[int]:
    """The server processes behind ``n`` pooled connections (checked out together, so all ``n`` exist)."""
    with ExitStack() as stack:
        conns = [stack.enter_context(engine.connect()) for _ in range(n)]
        return [int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for conn in conns]


def test_a_driver_statement_raises_sqlalchemy_errors_and_drops_lost_connections(pg_url: str) -> None:
    from sqlalchemy import bindparam, create_engine, literal, select

    engine = create_engine(pg_url, pool_size=2, max_overflow=0)
    ratio = DriverStatement(select((literal(1) / bindparam("p_n")).label("ratio")))
    try:
        # a statement error: SQLAlchemy's exception (what callers catch), the connections still good and reused
        pids = _backend_pids(engine, 2)
        with pytest.raises(DataError) as failed:
            ratio.first(engine, {"p_n": 0})
        assert isinstance(failed.value.orig, psycopg.errors.DivisionByZero) and not failed.value.connection_invalidated
        assert ratio.first(engine, {"p_n": 1}) == {"ratio": 1}
        assert sorted(_backend_pids(engine, 2)) == sorted(pids)

        # both pooled connections lost (a database restart): the first failure is flagged invalidated and takes
        # the pool's other connection with it, so retry_on_disconnect's second run connects afresh
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        failures: list[DBAPIError] = []

        def run() -> dict[str, Any] | None:
            try:
                return ratio.first(engine, {"p_n": 2})
            except DBAPIError as exc:
                failures.append(exc)
                raise

        assert retry_on_disconnect(run) == {"ratio": 0.5}
        assert len(failures) == 1
        assert isinstance(failures[0], OperationalError) and failures[0].connection_invalidated
        assert not set(_backend_pids(engine, 2)) & set(pids)
    finally:
        engine.dispose()


def test_a_driver_statement_raises_sqlalchemy_errors_when_no_connection_can_be_made() -> None:
    # The database is down or restarting: the pool's connect fails. Callers that wait an outage out (a finished
    # attempt recording its outcome) catch SQLAlchemy's OperationalError; psycopg's own error went past them.
    from sqlalchemy import bindparam, create_engine, select

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere")
    one = DriverStatement(select(bindparam("p_n").label("n")))
    try:
        with pytest.raises(OperationalError) as refused:
            one.first(engine, {"p_n": 1})
        assert isinstance(refused.value.orig, psycopg.OperationalError)
        assert not refused.value.connection_invalidated  # nothing was connected: no retry on a fresh connection
    finally:
        engine.dispose()


def _prepared_names(conn: Any) -> set[str]:
    return {name for (name,) in conn.exec_driver_sql("SELECT name FROM pg_prepared_statements").all()}


def test_a_driver_statement_commits_by_itself_and_survives_deallocated_statements(pg_url: str) -> None:
    from sqlalchemy import Integer, bindparam, column, create_engine, insert, table

    engine = create_engine(pg_url, pool_size=1, max_overflow=0)  # one connection: every step below uses it
    notes = table("driver_notes", column("n", Integer), column("label"))
    add = DriverStatement(insert(notes).values(n=bindparam("p_n"), label=bindparam("p_label")).returning(notes.c.n))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE driver_notes (n integer, label text)")
        assert add.first(engine, {"p_n": 1, "p_label": "one"}) == {"n": 1}
        # a larger integer is dumped as another type (int4, not int2): prepared again for those types
        assert add.first(engine, {"p_n": 100_000, "p_label": None}) == {"n": 100_000}
        with psycopg.connect(pg_url.replace("+psycopg", "")) as other:  # committed, without BEGIN/COMMIT
            assert other.execute("SELECT n, label FROM driver_notes ORDER BY n").fetchall() == [
                (1, "one"),
                (100_000, None),
            ]
        with engine.connect() as conn:
            assert _idle(conn.connection.driver_connection)
            ours = {name for name in _prepared_names(conn) if name.startswith("atelier_")}
            assert len(ours) == 2
            # psycopg prepares a statement run 5 times, and deallocates ALL of the session's after a rollback
            for _ in range(6):
                conn.exec_driver_sql("SELECT count(*) FROM driver_notes WHERE n > %(n)s", {"n": 0}).scalar_one()
            conn.rollback()
            assert not _prepared_names(conn) & ours  # the control: the statements are gone from the session
            conn.rollback()
        assert add.first(engine, {"p_n": 3, "p_label": "three"}) == {"n": 3}  # prepared again, run once
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM driver_notes").scalar_one() == 3
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS driver_notes")
        engine.dispose()


def test_a_driver_statement_never_runs_inside_a_transaction_left_open(pg_url: str) -> None:
    sql = b"INSERT INTO driver_open (n) VALUES ($1) RETURNING n"
    with (
        psycopg.connect(pg_url.replace("+psycopg", "")) as conn,
        psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as other,
    ):
        other.execute("CREATE TABLE driver_open (n integer)")
        try:
            conn.execute("SELECT 1")  # a transaction is open on the connection
            assert db._run_prepared(conn, {}, sql, [5]) == {"n": 5}
            assert _idle(conn)
            assert other.execute("SELECT n FROM driver_open").fetchall() == [(5,)]  # committed, not in the old one
        finally:
            other.execute("DROP TABLE driver_open")


def test_an_interrupted_driver_statement_returns_a_usable_connection(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import create_engine, literal, select

    engine = create_engine(pg_url, pool_size=1, max_overflow=0)
    one = DriverStatement(select(literal(1).label("one")))

    def interrupted(*args: Any) -> Any:  # not a driver error: a signal, a bug in an adapter
        raise RuntimeError("interrupted")

    try:
        assert one.first(engine, {}) == {"one": 1}
        monkeypatch.setattr(db, "_execute_prepared", interrupted)
        with pytest.raises(RuntimeError):
            one.first(engine, {})
        monkeypatch.undo()
        with engine.connect() as conn:
            assert _idle(conn.connection.driver_connection)
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert one.first(engine, {}) == {"one": 1}
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
