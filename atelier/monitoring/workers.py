"""Queue and worker monitoring (`/api/v1/monitoring/queues`, `/workers`, `/workers/health`).

Where each figure comes from:

- **Queue depth, average wait, completed last hour** — the database (the source of truth): PENDING tasks per
  ``tasks.queue_name``; mean ``started_at - created_at`` of tasks of the queue started in the last hour; tasks of
  the queue COMPLETED in the last hour. Queue names are logical (``inference``, ``local``…, without
  ``ATELIER_BROKER__QUEUE_PREFIX``), everywhere in these responses.
- **Workers, active/reserved tasks, consumers per queue** — the workers themselves:

  *Embedded mode* (no broker URL): the one in-process worker (``runtime.embedded_worker``; none when
  ``broker.embedded_worker=false``). Active tasks are EXECUTING rows claimed by this process (their
  ``executor_instance`` is the lease owner ``<runtime.worker_name>:<random>``), reserved tasks are the messages the
  worker has prefetched but not started, memory is this process's resident set (``/proc/self/status``). Completed
  total and rate are this process's COMPLETED tasks (since it started; rate over the last 5 minutes). Nothing is
  cached: every figure is read per request.

  *Distributed mode*: Celery's inspect API (``stats``, ``active_queues``, ``active``, ``reserved``, plus this
  module's ``atelier_memory`` command where the worker has it), broadcast from a background thread of this API
  process, each call on its own broker connection. ``stats`` goes to every worker and waits for replies until the
  broker is quiet for ``INSPECT_TIMEOUT_SECONDS`` (on Redis the blocking read has whole-second granularity, so
  about 1 s); the other calls go only to the workers that answered and return as soon as they all did. Workers
  that consume none of this deployment's (prefixed) queues are ignored: another deployment on the same broker.
  The snapshot is kept per process and Celery app (``SnapshotCollector``): younger than ``CACHE_TTL_SECONDS``
  (2 s) it is served as is; up to ``STALE_AFTER_SECONDS`` (5 s) it is served at once while a refresh runs; older,
  or none yet, the request waits for the refresh at most ``MAX_WAIT_SECONDS`` (2 s) and otherwise reports no
  workers. So a request never waits on the broker longer than ``MAX_WAIT_SECONDS`` (plus its database reads),
  even when the broker or the workers hang.

  **Bound for a dead worker:** a snapshot's age counts from the start of the broadcast that built it and no
  snapshot older than ``STALE_AFTER_SECONDS`` (5 s) is ever served, so a worker that died (or stopped answering)
  is gone from every response, and from health, within 5 s — about 3 s (TTL + one refresh) when the endpoints
  are polled often.

  ``tasks_completed_total`` is the worker's Celery counter of executed task messages (``stats()['total']``, since
  the worker started; a message dropped because its task was not claimable counts too). ``tasks_per_minute`` is
  the growth of that counter over the last 5 minutes, sampled by this API process at each refresh; until 10 s of
  samples exist it is the worker's lifetime average (counter / uptime). ``memory_mb`` is the current resident
  memory of the worker's main process plus its pool children when the worker answers ``atelier_memory``
  (registered by importing this module in the worker process); otherwise, for pools without child processes
  (threads, solo), the main process's peak resident memory (``rusage.maxrss``, KiB on Linux); otherwise null.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.worker.control import inspect_command
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Connection, and_, func, or_, select

from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.providers.registry import ALL_QUEUES
from atelier.settings import Settings
from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task

log = logging.getLogger(__name__)

INSPECT_TIMEOUT_SECONDS = 0.5  # how long a broadcast waits for worker replies
CACHE_TTL_SECONDS = 2.0  # a distributed snapshot is reused this long (per process and Celery app)
MAX_WAIT_SECONDS = 2.0  # the longest a request waits for a refresh (only when no snapshot is young enough)
STALE_AFTER_SECONDS = 5.0  # never serve a snapshot older than this: the bound for a dead worker to disappear
RATE_WINDOW_SECONDS = 300.0  # tasks_per_minute is measured over this window
MIN_RATE_SPAN_SECONDS = 10.0  # below this much sampled history, the lifetime average is reported instead
MEMORY_COMMAND = "atelier_memory"

# When this module was imported: every task claimed by this process (embedded mode) completed after it.
PROCESS_STARTED = utcnow()


# ------------------------------------------------------------------------------------------------ schemas


class QueueStats(BaseModel):
    """Statistics of one queue."""

    name: str = Field(..., description="Queue name")
    depth: int = Field(0, description="Number of pending tasks in queue")
    active_workers: int = Field(0, description="Number of workers consuming this queue")
    active_tasks: int = Field(0, description="Number of tasks currently being executed")
    reserved_tasks: int = Field(0, description="Number of tasks reserved by workers (prefetched)")
    avg_wait_time_ms: float | None = Field(None, description="Average time tasks wait in queue before execution (ms)")
    tasks_completed_last_hour: int = Field(0, description="Number of tasks completed in the last hour")


class QueueStatsResponse(BaseModel):
    """Response for queue statistics endpoint."""

    queues: list[QueueStats] = Field(default_factory=list, title="Queues", description="Statistics per queue")
    total_pending: int = Field(0, title="Total Pending", description="Total pending tasks across all queues")
    total_active: int = Field(0, title="Total Active", description="Total active tasks across all queues")
    timestamp: datetime = Field(..., title="Timestamp", description="Timestamp when stats were collected")


class WorkerInfo(BaseModel):
    """Statistics of one worker."""

    name: str = Field(..., description="Worker name (e.g., worker-fal@host1)")
    queues: list[str] = Field(default_factory=list, description="Queues this worker consumes")
    concurrency: int = Field(0, description="Maximum concurrent tasks")
    active_tasks: int = Field(0, description="Number of tasks currently executing")
    utilization_pct: float = Field(0.0, description="Utilization percentage (active_tasks / concurrency * 100)")
    has_capacity: bool = Field(False, description="Whether worker has capacity for more tasks")
    tasks_completed_total: int = Field(0, description="Total tasks completed by this worker")
    tasks_per_minute: float = Field(0.0, description="Average tasks completed per minute")
    memory_mb: float | None = Field(None, description="Total memory usage in MB (main process + pool children)")


class WorkerStatsResponse(BaseModel):
    """Response for worker statistics endpoint."""

    workers: list[WorkerInfo] = Field(default_factory=list, title="Workers", description="Statistics per worker")
    total_workers: int = Field(0, title="Total Workers", description="Total number of workers")
    total_capacity: int = Field(0, title="Total Capacity", description="Total capacity (sum of all worker concurrency)")
    total_active: int = Field(0, title="Total Active", description="Total active tasks across all workers")
    total_utilization_pct: float = Field(
        0.0, title="Total Utilization Pct", description="Overall utilization percentage"
    )
    workers_at_capacity: int = Field(0, title="Workers At Capacity", description="Number of workers at full capacity")
    timestamp: datetime = Field(..., title="Timestamp", description="Timestamp when stats were collected")


class WorkerHealthResponse(BaseModel):
    """Quick health check response for worker availability."""

    healthy: bool = Field(..., title="Healthy", description="Overall health status")
    total_workers: int = Field(0, title="Total Workers", description="Total number of workers")
    workers_with_capacity: int = Field(
        0, title="Workers With Capacity", description="Number of workers with available capacity"
    )
    queues_with_workers: list[str] = Field(
        default_factory=list, title="Queues With Workers", description="Queues that have at least one worker"
    )
    queues_without_workers: list[str] = Field(
        default_factory=list, title="Queues Without Workers", description="Queues that have no workers"
    )
    timestamp: datetime = Field(..., title="Timestamp", description="Timestamp when health was checked")


# ------------------------------------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class WorkerSample:
    """What is known about one worker at one moment (queue names logical)."""

    name: str
    concurrency: int
    queues: tuple[str, ...]
    active_by_queue: Mapping[str, int] = field(default_factory=dict)
    reserved_by_queue: Mapping[str, int] = field(default_factory=dict)
    active_tasks: int = 0
    tasks_completed_total: int = 0
    tasks_per_minute: float = 0.0
    memory_mb: float | None = None

    @property
    def has_capacity(self) -> bool:
        """A slot is free."""
        return self.active_tasks < self.concurrency

    def info(self) -> WorkerInfo:
        """The public model."""
        utilization = self.active_tasks / self.concurrency * 100 if self.concurrency else 0.0
        return WorkerInfo(
            name=self.name,
            queues=list(self.queues),
            concurrency=self.concurrency,
            active_tasks=self.active_tasks,
            utilization_pct=round(utilization, 2),
            has_capacity=self.has_capacity,
            tasks_completed_total=self.tasks_completed_total,
            tasks_per_minute=round(self.tasks_per_minute, 2),
            memory_mb=self.memory_mb,
        )


@dataclass(frozen=True)
class WorkersSnapshot:
    """Every worker found, and when the collection started (``time.monotonic()``)."""

    workers: tuple[WorkerSample, ...]
    started_at: float


def logical_queue(settings: Settings, broker_queue: str) -> str:
    """The logical name of a broker queue (the deployment prefix removed)."""
    prefix = settings.broker.queue_prefix
    return broker_queue[len(prefix) :] if prefix and broker_queue.startswith(prefix) else broker_queue


def known_queues(extra: Iterable[str] = ()) -> list[str]:
    """Every queue the providers route to (registry order), then any other queue seen (sorted)."""
    return [*ALL_QUEUES, *sorted(set(extra) - set(ALL_QUEUES))]


def worker_snapshot(runtime: Runtime) -> WorkersSnapshot:
    """The workers of this deployment: the embedded one, or the distributed ones (cached, bounded wait)."""
    if runtime.settings.embedded:
        return embedded_snapshot(runtime)
    return _collector_for(runtime).get()


# ------------------------------------------------------------------------------------------------ memory


def _rss_kib(pid: int | str) -> int | None:
    """Current resident memory of a process (KiB) from ``/proc``; None where unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_mb(maxrss: float) -> float:
    """``ru_maxrss`` in MB: KiB on Linux, bytes on macOS."""
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def process_memory_mb(pids: Iterable[int] = ()) -> float | None:
    """Resident memory of this process plus ``pids`` (MB); peak RSS of this process where /proc is missing."""
    own = _rss_kib("self")
    if own is None:
        try:
            import resource

            return round(_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), 1)
        except (ImportError, OSError):
            return None
    others = [_rss_kib(pid) for pid in pids]
    return round((own + sum(kib for kib in others if kib is not None)) / 1024, 1)


@inspect_command(name=MEMORY_COMMAND)
def _memory_command(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """Remote inspect command (in a worker that imported this module): RSS of the main process + pool children."""
    try:
        children = [int(pid) for pid in state.consumer.pool.info.get("processes", [])]
    except Exception:  # the pool may be starting or stopping; report the main process only
        children = []
    return {"memory_mb": process_memory_mb(children), "processes": 1 + len(children)}


# ------------------------------------------------------------------------------------------------ embedded


def _requests(live: Any) -> list[Any]:
    """A copy of one of Celery's worker-state request sets (another thread may change it meanwhile)."""
    for _ in range(5):
        try:
            return list(live)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return []


def _embedded_reserved(hostname: str, settings: Settings) -> dict[str, int]:
    """Messages the embedded worker prefetched but has not started, per logical queue (Celery worker state)."""
    from celery.worker import state as worker_state

    active = {id(r) for r in _requests(worker_state.active_requests)}
    counts: dict[str, int] = {}
    for request in _requests(worker_state.reserved_requests):
        if id(request) in active or getattr(request, "hostname", None) != hostname:
            continue
        routing = (getattr(request, "delivery_info", None) or {}).get("routing_key")
        if routing:
            queue = logical_queue(settings, str(routing))
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def embedded_snapshot(runtime: Runtime) -> WorkersSnapshot:
    """The in-process worker (none when it is disabled), its active tasks read from the database."""
    started = time.monotonic()
    worker = runtime.embedded_worker
    if worker is None:
        return WorkersSnapshot((), started)
    settings = runtime.settings
    owner = Task.executor_instance.startswith(f"{runtime.worker_name}:", autoescape=True)
    now = utcnow()
    window = min(RATE_WINDOW_SECONDS, max((now - PROCESS_STARTED).total_seconds(), 1.0))
    completed = and_(Task.status == TaskStatus.COMPLETED.value, owner)
    with runtime.engine.connect() as conn:
        active = {
            str(queue): int(n)
            for queue, n in conn.execute(
                select(Task.queue_name, func.count())
                .where(Task.status == TaskStatus.EXECUTING.value, owner)
                .group_by(Task.queue_name)
            )
        }
        # completed_at (indexed) bounds the scan: this process's tasks all completed after it started.
        total = conn.scalar(select(func.count()).where(completed, Task.completed_at >= PROCESS_STARTED)) or 0
        recent = conn.scalar(
            select(func.count()).where(completed, Task.completed_at >= now - timedelta(seconds=window))
        )
    sample = WorkerSample(
        name=worker.hostname,
        concurrency=worker.concurrency,
        queues=tuple(logical_queue(settings, q) for q in worker.queues),
        active_by_queue=active,
        reserved_by_queue=_embedded_reserved(worker.hostname, settings),
        active_tasks=sum(active.values()),
        tasks_completed_total=int(total),
        tasks_per_minute=(recent or 0) / window * 60,
        memory_mb=process_memory_mb(),
    )
    return WorkersSnapshot((sample,), started)


# ------------------------------------------------------------------------------------------------ distributed


class _Rates:
    """tasks_per_minute from successive samples of each worker's executed-task counter."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}

    def rate(self, name: str, pid: int, total: int, uptime: float, now: float) -> float:
        """Record ``total`` for worker ``name`` and return its recent rate (tasks per minute)."""
        samples = self._samples.setdefault(name, deque())
        if samples and (samples[-1][1] != pid or total < samples[-1][2]):
            samples.clear()  # the worker restarted: its counter started again
        samples.append((now, pid, total))
        while len(samples) > 1 and now - samples[0][0] > RATE_WINDOW_SECONDS:
            samples.popleft()
        span = now - samples[0][0]
        if span >= MIN_RATE_SPAN_SECONDS:
            return (total - samples[0][2]) / span * 60
        return total / uptime * 60 if uptime > 0 else 0.0

    def keep(self, names: Iterable[str]) -> None:
        """Forget workers that are gone."""
        alive = set(names)
        for name in list(self._samples):
            if name not in alive:
                del self._samples[name]


def _count_by_queue(requests: Any, settings: Settings) -> tuple[int, dict[str, int]]:
    """How many task requests a worker reported, and how many per logical queue (by the message's routing key)."""
    listed = requests if isinstance(requests, list) else []
    counts: dict[str, int] = {}
    for request in listed:
        delivery = request.get("delivery_info") if isinstance(request, dict) else None
        routing = delivery.get("routing_key") if isinstance(delivery, dict) else None
        if routing:
            queue = logical_queue(settings, str(routing))
            counts[queue] = counts.get(queue, 0) + 1
    return len(listed), counts


def _replies(raw: Any) -> dict[str, Any]:
    """``[{node: reply}, …]`` (broadcast) or ``{node: reply}`` (inspect) → one dict."""
    if isinstance(raw, dict):
        return raw
    merged: dict[str, Any] = {}
    for item in raw or []:
        if isinstance(item, dict):
            merged.update(item)
    return merged


class InspectSource:
    """Builds distributed snapshots with Celery's inspect API (called from the collector's thread only)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.rates = _Rates()
        self.no_memory_command: set[tuple[str, int]] = set()  # (worker, pid) that lack ``atelier_memory``

    def __call__(self) -> WorkersSnapshot:
        """Broadcast stats, queues, active, reserved (and memory) and combine the replies."""
        started = time.monotonic()
        stats = self._ask("stats")
        if not stats:
            return WorkersSnapshot((), started)
        names = sorted(stats)
        # Only the workers that answered stats are asked again, and each call returns once all of them answered.
        queues = self._ask("active_queues", names)
        active = self._ask("active", names)
        reserved = self._ask("reserved", names)
        memory = self._memory(names, stats)
        now = time.monotonic()
        samples = []
        for name in names:
            sample = self._sample(name, stats[name], queues.get(name), active.get(name), reserved.get(name), now)
            if sample is not None:
                measured = memory.get(name)
                samples.append(sample if measured is None else replace(sample, memory_mb=measured))
        self.rates.keep(names)
        return WorkersSnapshot(tuple(samples), started)

    def _ask(self, command: str, destination: list[str] | None = None) -> dict[str, Any]:
        """One inspect broadcast, ``{worker: reply}``; with ``destination``, it returns once they all replied.

        Each call has its own broker connection: on Redis a broadcast that waited out its timeout leaves a blocking
        read behind on its connection, which swallows the reply to the next broadcast made on it.
        """
        with self.app.connection_for_write() as conn:
            # Fail fast on an unreachable broker (the refresh then reports it) instead of retrying for ever.
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=1, timeout=2)
            return _replies(
                self.app.control.broadcast(
                    command,
                    reply=True,
                    destination=destination,
                    limit=len(destination) if destination else None,
                    timeout=INSPECT_TIMEOUT_SECONDS,
                    connection=conn,
                )
            )

    def _memory(self, names: list[str], stats: dict[str, Any]) -> dict[str, float | None]:
        pids = {name: int(stats[name].get("pid") or 0) for name in names if isinstance(stats[name], dict)}
        ask = [name for name in names if (name, pids.get(name, 0)) not in self.no_memory_command]
        if not ask:
            return {}
        replies = self._ask(MEMORY_COMMAND, ask)
        found: dict[str, float | None] = {}
        for name, reply in replies.items():
            if isinstance(reply, dict) and "error" not in reply:
                value = reply.get("memory_mb")
                found[name] = float(value) if isinstance(value, int | float) else None
            elif isinstance(reply, dict):  # an older worker without the command: do not ask it again
                self.no_memory_command.add((name, pids.get(name, 0)))
        return found

    def _sample(
        self, name: str, stats: Any, queues: Any, active: Any, reserved: Any, now: float
    ) -> WorkerSample | None:
        if not isinstance(stats, dict):
            return None
        prefix = self.settings.broker.queue_prefix
        broker_queues = [str(q.get("name")) for q in queues or [] if isinstance(q, dict) and q.get("name")]
        ours = [q for q in broker_queues if q.startswith(prefix)] if prefix else broker_queues
        if queues is not None and not ours:
            return None  # a worker of another deployment sharing the broker's control exchange
        pool = stats.get("pool") or {}
        concurrency = int(pool.get("max-concurrency") or 0)
        counters = stats.get("total") or {}
        total = sum(int(v) for v in counters.values()) if isinstance(counters, dict) else 0
        memory: float | None = None
        rusage = stats.get("rusage")
        if not pool.get("processes") and isinstance(rusage, dict) and rusage.get("maxrss"):
            memory = round(_maxrss_mb(float(rusage["maxrss"])), 1)  # no child processes: the main one is all
        active_tasks, active_by_queue = _count_by_queue(active, self.settings)
        return WorkerSample(
            name=name,
            concurrency=concurrency,
            queues=tuple(logical_queue(self.settings, q) for q in ours),
            active_by_queue=active_by_queue,
            reserved_by_queue=_count_by_queue(reserved, self.settings)[1],
            active_tasks=active_tasks,
            tasks_completed_total=total,
            tasks_per_minute=self.rates.rate(
                name, int(stats.get("pid") or 0), total, float(stats.get("uptime") or 0), now
            ),
            memory_mb=memory,
        )


class SnapshotCollector:
    """Serves snapshots built by ``fetch`` in a background thread, never one older than ``stale_after``.

    Ages count from the start of the collection that built a snapshot. Younger than ``ttl``: served as is. Between
    ``ttl`` and ``stale_after``: served at once while a refresh runs (stale-while-revalidate, so a request does not
    pay for the broadcast). Older, or none yet: the request waits for the refresh at most ``max_wait``, then gets
    it, or no workers at all. At most one refresh runs at a time; one that hangs (an unreachable broker is retried
    forever) delays no request beyond ``max_wait``.
    """

    def __init__(
        self,
        fetch: Callable[[], WorkersSnapshot],
        *,
        ttl: float = CACHE_TTL_SECONDS,
        max_wait: float = MAX_WAIT_SECONDS,
        stale_after: float = STALE_AFTER_SECONDS,
    ) -> None:
        self.fetch = fetch
        self.ttl = ttl
        self.max_wait = max_wait
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._snapshot: WorkersSnapshot | None = None
        self._inflight: threading.Event | None = None
        self._failed_at: float | None = None

    def get(self) -> WorkersSnapshot:
        """A snapshot at most ``stale_after`` old, after waiting at most ``max_wait`` for a refresh."""
        with self._lock:
            now = time.monotonic()
            snapshot = self._snapshot
            age = now - snapshot.started_at if snapshot is not None else float("inf")
            if snapshot is not None and age < self.ttl:
                return snapshot
            recently_failed = self._failed_at is not None and now - self._failed_at < self.ttl
            if self._inflight is None and not recently_failed:
                self._inflight = threading.Event()
                threading.Thread(
                    target=self._refresh, args=(self._inflight,), name="atelier-worker-inspect", daemon=True
                ).start()
            inflight = self._inflight
            if snapshot is not None and age <= self.stale_after:
                return snapshot
        if inflight is not None:
            inflight.wait(self.max_wait)
        with self._lock:
            snapshot = self._snapshot
        if snapshot is not None and time.monotonic() - snapshot.started_at <= self.stale_after:
            return snapshot
        log.warning("no worker snapshot younger than %.0fs; reporting no workers", self.stale_after)
        return WorkersSnapshot((), time.monotonic())

    def _refresh(self, done: threading.Event) -> None:
        try:
            snapshot = self.fetch()
        except Exception:
            log.warning("inspecting workers failed", exc_info=True)
            with self._lock:
                self._failed_at = time.monotonic()
        else:
            with self._lock:
                if self._snapshot is None or snapshot.started_at >= self._snapshot.started_at:
                    self._snapshot = snapshot
                self._failed_at = None
        finally:
            with self._lock:
                self._inflight = None
            done.set()


_collectors: weakref.WeakKeyDictionary[Celery, SnapshotCollector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def _collector_for(runtime: Runtime) -> SnapshotCollector:
    with _collectors_lock:
        collector = _collectors.get(runtime.celery)
        if collector is None:
            collector = SnapshotCollector(InspectSource(runtime.celery, runtime.settings))
            _collectors[runtime.celery] = collector
        return collector


# ------------------------------------------------------------------------------------------------ responses


def worker_stats(runtime: Runtime) -> WorkerStatsResponse:
    """Per-worker utilisation, capacity and throughput, with totals."""
    workers = worker_snapshot(runtime).workers
    capacity = sum(w.concurrency for w in workers)
    active = sum(w.active_tasks for w in workers)
    return WorkerStatsResponse(
        workers=[w.info() for w in workers],
        total_workers=len(workers),
        total_capacity=capacity,
        total_active=active,
        total_utilization_pct=round(active / capacity * 100, 2) if capacity else 0.0,
        workers_at_capacity=sum(1 for w in workers if not w.has_capacity),
        timestamp=utcnow(),
    )


def worker_health(runtime: Runtime) -> WorkerHealthResponse:
    """Healthy when at least one worker has a free slot; which known queues have a consumer."""
    workers = worker_snapshot(runtime).workers
    consumed = {q for w in workers for q in w.queues}
    queues = known_queues(consumed)
    with_capacity = sum(1 for w in workers if w.has_capacity)
    return WorkerHealthResponse(
        healthy=with_capacity > 0,
        total_workers=len(workers),
        workers_with_capacity=with_capacity,
        queues_with_workers=[q for q in queues if q in consumed],
        queues_without_workers=[q for q in queues if q not in consumed],
        timestamp=utcnow(),
    )


def _wait_seconds(conn: Connection) -> ColumnElement[Any]:
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", Task.started_at - Task.created_at)
    return (func.julianday(Task.started_at) - func.julianday(Task.created_at)) * 86400.0


def _queue_figures(conn: Connection, cutoff: datetime) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """PENDING per queue; COMPLETED since ``cutoff`` per queue; mean wait (s) of tasks started since ``cutoff``."""
    depth = {
        str(q): int(n)
        for q, n in conn.execute(
            select(Task.queue_name, func.count())
            .where(Task.status == TaskStatus.PENDING.value)
            .group_by(Task.queue_name)
        )
    }
    completed = {
        str(q): int(n)
        for q, n in conn.execute(
            select(Task.queue_name, func.count())
            .where(Task.status == TaskStatus.COMPLETED.value, Task.completed_at >= cutoff)
            .group_by(Task.queue_name)
        )
    }
    # started_at has no index; a task started since the cutoff is still PENDING/EXECUTING or finished since then,
    # which the (status, queue) and completed_at indexes find.
    recent = or_(
        Task.status.in_([TaskStatus.PENDING.value, TaskStatus.EXECUTING.value]),
        Task.completed_at >= cutoff,
    )
    waits = {
        str(q): float(avg)
        for q, avg in conn.execute(
            select(Task.queue_name, func.avg(_wait_seconds(conn)))
            .where(Task.started_at.is_not(None), Task.started_at >= cutoff, recent)
            .group_by(Task.queue_name)
        )
        if avg is not None
    }
    return depth, completed, waits


def queue_stats(runtime: Runtime) -> QueueStatsResponse:
    """Depth, consumers, active/reserved tasks, mean wait and last-hour completions of every known queue."""
    workers = worker_snapshot(runtime).workers
    with runtime.engine.connect() as conn:
        depth, completed, waits = _queue_figures(conn, utcnow() - timedelta(hours=1))
    consumers: dict[str, int] = {}
    active: dict[str, int] = {}
    reserved: dict[str, int] = {}
    for worker in workers:
        for queue in worker.queues:
            consumers[queue] = consumers.get(queue, 0) + 1
        for queue, n in worker.active_by_queue.items():
            active[queue] = active.get(queue, 0) + n
        for queue, n in worker.reserved_by_queue.items():
            reserved[queue] = reserved.get(queue, 0) + n
    names = known_queues([*depth, *completed, *waits, *consumers, *active, *reserved])
    queues = [
        QueueStats(
            name=name,
            depth=depth.get(name, 0),
            active_workers=consumers.get(name, 0),
            active_tasks=active.get(name, 0),
            reserved_tasks=reserved.get(name, 0),
            avg_wait_time_ms=round(waits[name] * 1000, 1) if name in waits else None,
            tasks_completed_last_hour=completed.get(name, 0),
        )
        for name in names
    ]
    return QueueStatsResponse(
        queues=queues,
        total_pending=sum(q.depth for q in queues),
        total_active=sum(q.active_tasks for q in queues),
        timestamp=utcnow(),
    )
