"""Queue position and ETA of a waiting task, from the database (cheap: one indexed count, stats cached).

Position: PENDING tasks of the same queue that start first — a higher priority, or the same priority and
older (``ix_tasks_queue_order``). It is an estimate: per-tenant fairness and retry delays can reorder a little.
ETA: seconds until the task is likely finished = (position // parallelism + 1) × the queue's recent mean run
time, where parallelism is the number of tasks of that queue running now (at least 1). Without a finished task
of that queue in the recent past there is no ETA.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, case, func, or_, select

from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task

STATS_TTL_SECONDS = 5.0
SAMPLE = 50

_BEFORE = Task.__table__.alias("before")
# The row's queue position as a column of the row's own read (one statement, not two): PENDING tasks of its queue
# that start first. NULL for any other status (CASE evaluates the count only for a PENDING row).
QUEUE_AHEAD = case(
    (
        Task.status == TaskStatus.PENDING.value,
        select(func.count())
        .select_from(_BEFORE)
        .where(
            _BEFORE.c.status == TaskStatus.PENDING.value,
            _BEFORE.c.queue_name == Task.queue_name,
            or_(
                _BEFORE.c.priority > Task.priority,
                and_(_BEFORE.c.priority == Task.priority, _BEFORE.c.created_at < Task.created_at),
            ),
        )
        .correlate(Task.__table__)
        .scalar_subquery(),
    ),
    else_=None,
).label("queue_ahead")
_RUNNING = select(func.count()).where(Task.status == TaskStatus.EXECUTING.value, Task.queue_name == bindparam("queue"))
_RECENT = (
    select(Task.started_at, Task.completed_at)
    .where(
        Task.status == TaskStatus.COMPLETED.value,
        Task.queue_name == bindparam("queue"),
        Task.completed_at.is_not(None),
        Task.started_at.is_not(None),
    )
    .order_by(Task.completed_at.desc())
    .limit(SAMPLE)
)


@dataclass(frozen=True)
class _Stats:
    at: float
    mean_run_seconds: float | None
    running: int


_cache: dict[tuple[int, str], _Stats] = {}
_lock = threading.Lock()


def _stats(conn: Connection, queue: str) -> _Stats:
    key = (id(conn.engine), queue)
    now = time.monotonic()
    with _lock:
        cached = _cache.get(key)
    if cached is not None and now - cached.at < STATS_TTL_SECONDS:
        return cached
    runs = [(row.completed_at - row.started_at).total_seconds() for row in conn.execute(_RECENT, {"queue": queue})]
    running = int(conn.execute(_RUNNING, {"queue": queue}).scalar() or 0)
    stats = _Stats(now, sum(runs) / len(runs) if runs else None, running)
    with _lock:
        _cache[key] = stats
    return stats


def estimate(conn: Connection, queue: str, ahead: int) -> tuple[int, float | None]:
    """``(queue_position, eta_seconds)`` of a PENDING task of ``queue`` with ``ahead`` tasks before it
    (``QUEUE_AHEAD`` read with its row)."""
    stats = _stats(conn, queue)
    if stats.mean_run_seconds is None:
        return ahead, None
    rounds = ahead // max(stats.running, 1) + 1
    return ahead, round(rounds * stats.mean_run_seconds, 3)
