"""Database plumbing: declarative base, portable column types, engine and session factories."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import JSON, Connection, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    import psycopg

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable Alembic diffs)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamp that always reads back as UTC (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; normalise to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use atelier.core.time.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to values that come back naive."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


T = TypeVar("T")

JSONType = JSON().with_variant(JSONB(), "postgresql")


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def create_db_engine(
    url: str, *, pool_size: int = 10, echo: bool = False, busy_timeout_ms: int = 10_000, pre_ping: bool = True
) -> Engine:
    """Build the engine for ``url`` with the pragmas/pool that suit its dialect.

    ``pre_ping`` tests each pooled connection before use (one round trip per checkout). Workers turn it off
    and retry a statement once when its connection turns out dead (``retry_on_disconnect``) instead.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
        return engine
    return create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping, pool_recycle=1800
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Session factory; objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work outside HTTP: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def statement_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for work that is ONE statement (atomic by itself).

    PostgreSQL runs it in autocommit mode: no BEGIN/COMMIT round trips. Elsewhere (SQLite, where a change
    and its event are two statements) it is an ordinary transaction.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
    else:
        with engine.begin() as conn:
            yield conn


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no snapshot in common (each statement answers by itself).

    PostgreSQL runs them in autocommit mode: no BEGIN round trip before the first statement and no ROLLBACK
    round trip when the connection goes back to the pool (it leaves the pool, and comes back, transactional).
    """
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else conn


class DriverStatement:
    """A Core statement that PostgreSQL (psycopg) runs as SQL compiled once, for the hot path of every task run.

    Even for a statement in its compiled cache, SQLAlchemy builds a cache key and runs bind and result
    processors on every execution, and a ``Connection`` with its execution options and a ``CursorResult`` with
    its column metadata are built around every statement: 0.30 ms of CPU per claim, of which psycopg's cursor
    needed 0.13. Here the statement is compiled once per dialect and run on a pooled connection through libpq
    directly (``_run_prepared``): a server-side prepared statement, executed outside any transaction (it is one
    atomic statement, committed by itself), 0.06 ms. What SQLAlchemy did that matters here is done directly:
    JSON parameters (``json_params``) are wrapped for psycopg, naive datetimes are refused like ``UTCDateTime``
    refuses them, timestamps come back in UTC, and a driver error is raised as SQLAlchemy's ``DBAPIError`` with
    ``connection_invalidated`` set for a lost connection, which is dropped from the pool with the pool's older
    connections (``retry_on_disconnect`` relies on both). Parameters and rows are converted by psycopg's own
    adapters (UUIDs, JSON, timestamps), as its cursors convert them. A forgotten parameter raises instead of
    being sent as NULL. Other drivers run the statement through SQLAlchemy as usual (``statement_connection``).
    """

    def __init__(self, stmt: Any, json_params: Iterable[str] = ()) -> None:
        self.stmt = stmt
        self.json_params = frozenset(json_params)
        self._sql: bytes | None = None  # PostgreSQL's own placeholders ($1, $2…)
        self._order: tuple[str, ...] = ()  # the parameter behind each placeholder
        self._constants: dict[str, Any] = {}
        self._required: frozenset[str] = frozenset()
        self._jsonb: Callable[[Any], Any] = lambda value: value

    def _compile(self, dialect: Dialect) -> bytes:
        from psycopg.types.json import Jsonb  # only PostgreSQL deployments load the driver

        compiled = self.stmt.compile(dialect=dialect)
        self._required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        self._constants = {name: value for name, value in compiled.params.items() if name not in self._required}
        self._jsonb = Jsonb
        self._sql, self._order = numbered_placeholders(str(compiled))
        return self._sql

    def prepare(self, dialect: Dialect) -> None:
        """Compile now rather than at the first run (a worker does it before forking its pool processes)."""
        if dialect.driver == "psycopg" and self._sql is None:
            self._compile(dialect)

    def first(self, engine: Engine, params: dict[str, Any]) -> dict[str, Any] | None:
        """One atomic statement with ``params`` (every bind parameter declared without a value); its first row."""
        if engine.dialect.driver != "psycopg":
            with statement_connection(engine) as conn:
                mapping = conn.execute(self.stmt, params).mappings().first()
                return None if mapping is None else dict(mapping)
        sql = self._sql or self._compile(engine.dialect)
        missing = self._required - params.keys()
        if missing:
            raise TypeError(f"missing parameters: {sorted(missing)}")
        values = {**self._constants, **params}
        for name, value in values.items():
            if isinstance(value, datetime) and value.tzinfo is None:
                raise ValueError(f"naive datetime refused for {name}: use atelier.core.time.utcnow()")
        for name in self.json_params:
            if values[name] is not None:
                values[name] = self._jsonb(values[name])
        row = _pooled_first(engine, sql, [values[name] for name in self._order])
        if row is None:
            return None
        return {k: v.astimezone(UTC) if isinstance(v, datetime) else v for k, v in row.items()}


_PLACEHOLDER_RE = re.compile(r"%%|%\(([^)]+)\)s")


def numbered_placeholders(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """psycopg's ``%(name)s`` SQL as PostgreSQL's ``$n`` SQL, and the parameter name behind each ``$n``."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:  # an escaped percent sign
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PLACEHOLDER_RE.sub(number, sql).encode(), tuple(order)


def _pooled_first(engine: Engine, sql: bytes, args: list[Any]) -> dict[str, Any] | None:
    """Run ``sql`` on a pooled psycopg connection, outside any transaction; the first row as a dict."""
    dbapi = engine.dialect.loaded_dbapi
    try:
        fairy = engine.raw_connection()
    except dbapi.Error as exc:  # no connection (the server is down or restarting): raised as a Connection raises it
        raise DBAPIError.instance(None, None, exc, dbapi.Error, dialect=engine.dialect) from exc
    conn = cast("psycopg.Connection[Any]", fairy.driver_connection)
    try:
        return _run_prepared(conn, fairy.info, sql, args)
    except dbapi.Error as exc:
        lost = engine.dialect.is_disconnect(exc, cast(Any, conn), None)
        if lost:  # what SQLAlchemy does for its own statements: this connection and the pool's older ones go
            engine.pool._invalidate(fairy, exc)
        raise DBAPIError.instance(
            sql.decode(), args, exc, dbapi.Error, connection_invalidated=lost, dialect=engine.dialect
        ) from exc
    finally:
        fairy.close()


_PREPARED_NAMES = itertools.count()
_UNDEFINED_PREPARED_STATEMENT = "26000"


class _Prepared:
    """What one connection has prepared for ``_run_prepared`` (kept in the pool record's ``info``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg.adapt import Transformer

        self.transformer = Transformer(conn)
        self.names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}  # (SQL, parameter types) -> statement name
        self.columns: dict[bytes, tuple[str, ...]] = {}


def _run_prepared(
    conn: psycopg.Connection[Any], info: dict[str, Any], sql: bytes, args: list[Any]
) -> dict[str, Any] | None:
    """Execute ``sql`` as a prepared statement with one blocking libpq call (the GIL is released meanwhile).

    psycopg's cursor gets there through its query conversion, its prepared-statement bookkeeping and a
    generator-driven wait loop; the statement, the parameters (dumped by psycopg's adapters, as a cursor dumps
    them) and the result are the same. The connection is idle (no transaction: the pool hands them out so), so
    the server runs the statement in its own implicit transaction and commits it. A statement is prepared
    once per connection and parameter types; psycopg deallocates every prepared statement of the session in
    some cases (after a rollback, when it had prepared its own), which the server answers with
    "prepared statement does not exist": then it is prepared again, before anything ran.
    """
    from psycopg import pq
    from psycopg.adapt import PyFormat

    pgconn = conn.pgconn
    if pgconn.transaction_status != pq.TransactionStatus.IDLE:
        conn.rollback()  # never run inside a transaction someone left open: it would not commit
    state = info.get("atelier_prepared")
    if state is None:
        state = info["atelier_prepared"] = _Prepared(conn)
    tx = state.transformer
    params = tx.dump_sequence(args, [PyFormat.AUTO] * len(args))
    key = (sql, tuple(tx.types or ()))
    result = _execute_prepared(conn, state, key, params)
    if result.status == pq.ExecStatus.FATAL_ERROR and _sqlstate(result) == _UNDEFINED_PREPARED_STATEMENT:
        state.names.clear()  # the session's prepared statements were deallocated: prepare again
        result = _execute_prepared(conn, state, key, params)
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise _error(conn, result)
    if result.ntuples == 0:
        return None
    columns = state.columns.get(sql)
    if columns is None:
        columns = state.columns[sql] = tuple((result.fname(i) or b"").decode() for i in range(result.nfields))
    tx.set_pgresult(result)
    return dict(zip(columns, tx.load_row(0, tuple), strict=True))


def _execute_prepared(
    conn: psycopg.Connection[Any], state: _Prepared, key: tuple[bytes, tuple[int, ...]], params: Sequence[Any]
) -> Any:
    """Prepare ``key`` on ``conn`` unless it is, and execute it (binary results)."""
    from psycopg import pq

    name = state.names.get(key)
    if name is None:
        name = f"atelier_{next(_PREPARED_NAMES)}".encode()
        prepared = conn.pgconn.prepare(name, key[0], key[1])
        if prepared.status != pq.ExecStatus.COMMAND_OK:
            raise _error(conn, prepared)
        state.names[key] = name
    return conn.pgconn.exec_prepared(name, params, state.transformer.formats, result_format=pq.Format.BINARY)


def _sqlstate(result: Any) -> str:
    from psycopg import pq

    return (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()


def _error(conn: psycopg.Connection[Any], result: Any) -> Exception:
    """The psycopg exception a cursor would raise for a failed ``result``."""
    from psycopg import errors, pq

    if conn.pgconn.status == pq.ConnStatus.BAD and not _sqlstate(result):
        # libpq's own report of a connection that broke under the statement, as psycopg's wait loop raises it
        return errors.OperationalError(result.get_error_message(conn.info.encoding) or "the connection was lost")
    return errors.error_from_result(result, encoding=conn.info.encoding)


def retry_on_disconnect(work: Callable[[], T]) -> T:
    """Run ``work``; if its connection was found dead (DB restarted, idle connection killed), run it once more.

    A disconnect invalidates the whole pool, so the second run gets a fresh connection. Only for work that is
    safe to repeat: one atomic statement or transaction whose first run did not commit (or whose effects the
    second run detects, like a conditional UPDATE).
    """
    try:
        return work()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return work()


def lock_for_write(session: Session) -> None:
    """On SQLite, take the database's write lock as the transaction's first statement.

    SQLite's deferred transactions read from a snapshot taken at the first read; a writer that commits
    before our first write makes that write fail (SQLITE_BUSY_SNAPSHOT). Work that reads to decide what to
    write (planning a workflow) takes the lock up front instead. PostgreSQL uses row locks (FOR UPDATE).
    """
    if session.get_bind().dialect.name == "sqlite" and not session.in_transaction():
        session.execute(text("BEGIN IMMEDIATE"))


def try_leadership(session: Session, key: int) -> bool:
    """Whether this transaction may do singleton work named by ``key``.

    On PostgreSQL: a transaction-scoped advisory lock (released at commit or when the connection dies, so a crashed
    leader never blocks the others). SQLite deployments have a single process: always True.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar())
