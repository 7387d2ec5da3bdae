"""Queue position and ETA of a waiting task, from the database (cheap: two indexed reads, stats cached).

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
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select

from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task

STATS_TTL_SECONDS = 5.0
SAMPLE = 50

_AHEAD = select(func.count()).where(
    Task.status == TaskStatus.PENDING.value,
    Task.queue_name == bindparam("queue"),
    or_(
        Task.priority > bindparam("priority"),
        and_(Task.priority == bindparam("priority"), Task.created_at < bindparam("created")),
    ),
)
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


def estimate(conn: Connection, task: Any) -> tuple[int, float | None]:
    """``(queue_position, eta_seconds)`` of a PENDING task (``task``: a row or a plain record)."""
    params = {"queue": task.queue_name, "priority": task.priority, "created": task.created_at}
    ahead = int(conn.execute(_AHEAD, params).scalar() or 0)
    stats = _stats(conn, task.queue_name)
    if stats.mean_run_seconds is None:
        return ahead, None
    rounds = ahead // max(stats.running, 1) + 1
    return ahead, round(rounds * stats.mean_run_seconds, 3)
