"""Prometheus metrics: what workers, provider calls and webhook sends count, and ``GET /metrics``.

Two kinds of figures:

- *Events*, counted where they happen (a worker recording an outcome, a remote call, a webhook attempt):
  counters and histograms of ``prometheus_client``, process-wide.
- *State*, read from the database when ``/metrics`` is scraped (one grouped query over the unfinished tasks):
  tasks by status/type/provider/queue and the queue depths. The database is the source of truth, so these
  are right whichever process changed the rows. Finished tasks are not counted there (that count only grows,
  and scanning it at every scrape would grow with it): their rate is ``atelier_task_outcomes_total``.

Labels are low-cardinality by construction: statuses, task types, provider types, queues, service names and
outcome classes — never task ids, tenants or URLs.

Several processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder shared by every process of a host
(``atelier serve`` and ``atelier worker`` with its prefork children) before they start; each process then writes
its samples to files there and ``/metrics`` of any API process on that host reports the sum. Without the
variable each process keeps its own registry (the embedded default: the worker threads live in the API process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select

from atelier.core.auth import Principal, Role
from atelier.core.deps import RuntimeDep, bearer_scheme, get_principal
from atelier.core.errors import ForbiddenError
from atelier.providers.registry import ALL_QUEUES
from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task

if TYPE_CHECKING:
    from atelier.core.runtime import Runtime

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NONE = "none"  # label value of a task without provider type

# Queue waits and runs: from sub-second local work to hour-long remote jobs.
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# One HTTP call to a remote service.
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

TASK_OUTCOMES = Counter(
    "atelier_task_outcomes_total",
    "Attempt outcomes recorded by workers: completed, failed, cancelled, retried (back to PENDING with a backoff), "
    "fallback (handed to the fallback provider), discarded (the attempt had lost its lease).",
    ["outcome", "task_type", "provider_type"],
)
TASK_WAIT = Histogram(
    "atelier_task_wait_seconds",
    "Queue wait of a task: created → first started (observed once per task, with its first attempt's outcome).",
    ["task_type", "provider_type"],
    buckets=TASK_BUCKETS,
)
TASK_RUN = Histogram(
    "atelier_task_run_seconds",
    "Run time of one attempt: claimed → outcome recorded (retries are observed once each).",
    ["task_type", "provider_type"],
    buckets=TASK_BUCKETS,
)
PROVIDER_CALLS = Histogram(
    "atelier_provider_call_seconds",
    "Latency of one HTTP call to a remote service, by outcome class (2xx, 3xx, 4xx, 429, 5xx, timeout, network).",
    ["service", "outcome"],
    buckets=CALL_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    "atelier_provider_call_errors_total",
    "HTTP calls to a remote service that did not succeed, by outcome class (4xx, 429, 5xx, timeout, network).",
    ["service", "outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "atelier_webhook_attempts_total",
    "Webhook delivery attempts as settled: delivered, retry (another attempt is scheduled), failed (given up).",
    ["outcome"],
)

_OK_CLASSES = frozenset({"2xx", "3xx"})


def multiprocess_dir() -> str | None:
    """The shared metrics folder when multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR``), else None."""
    return os.environ.get(MULTIPROC_ENV) or None


# ------------------------------------------------------------------------------------ events


def observe_task_outcome(outcome: str, task_type: str, provider_type: str | None) -> None:
    """Count one attempt outcome recorded by a worker (see ``TASK_OUTCOMES`` for the values)."""
    TASK_OUTCOMES.labels(outcome, task_type, provider_type or NONE).inc()


def observe_task_wait(task_type: str, provider_type: str | None, seconds: float) -> None:
    """Observe a task's queue wait (created → first started)."""
    TASK_WAIT.labels(task_type, provider_type or NONE).observe(max(seconds, 0.0))


def observe_task_run(task_type: str, provider_type: str | None, seconds: float) -> None:
    """Observe one attempt's run time (claimed → outcome recorded)."""
    TASK_RUN.labels(task_type, provider_type or NONE).observe(max(seconds, 0.0))


def call_outcome(status_code: int | None = None, error: str | None = None) -> str:
    """The outcome class of an HTTP call: ``2xx``…``5xx`` and ``429`` from its status; without one, ``timeout``
    when the error (an exception class name such as httpx's ``ReadTimeout``) is a timeout, else ``network``."""
    if status_code is not None:
        return "429" if status_code == 429 else f"{min(max(status_code // 100, 1), 5)}xx"
    if error is not None and "timeout" in error.lower():
        return "timeout"
    return "network"


def observe_provider_call(service: str, outcome: str, seconds: float) -> None:
    """Observe one remote call's latency; an outcome other than 2xx/3xx also counts as an error."""
    PROVIDER_CALLS.labels(service, outcome).observe(max(seconds, 0.0))
    if outcome not in _OK_CLASSES:
        PROVIDER_ERRORS.labels(service, outcome).inc()


def observe_webhook_attempt(state: str) -> None:
    """Count a settled webhook attempt by the delivery's state after it: DELIVERED, PENDING (retry) or FAILED."""
    outcome = {"DELIVERED": "delivered", "PENDING": "retry"}.get(state.upper(), "failed")
    WEBHOOK_ATTEMPTS.labels(outcome).inc()


def mark_process_dead(pid: int | None = None, **_: object) -> None:
    """Celery ``worker_process_shutdown`` receiver: drop a finished process's live gauges (multiprocess mode)."""
    if multiprocess_dir():
        prometheus_multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------------ state at scrape

_ACTIVE = (TaskStatus.PENDING.value, TaskStatus.EXECUTING.value)
_STATE_QUERY = (
    select(Task.status, Task.task_type, Task.provider_type, Task.queue_name, func.count())
    .where(Task.status.in_(_ACTIVE), Task.is_deleted.is_(False))
    .group_by(Task.status, Task.task_type, Task.provider_type, Task.queue_name)
)


class StateCollector:
    """Gauges read from the database at scrape time: unfinished tasks, queue depths, embedded workers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        """One grouped query over PENDING and EXECUTING tasks; every known queue is reported, empty ones as 0."""
        tasks = GaugeMetricFamily(
            "atelier_tasks",
            "Unfinished tasks (PENDING, EXECUTING) by status, task type, provider type and queue (from the database).",
            labels=["status", "task_type", "provider_type", "queue"],
        )
        depth: dict[str, float] = dict.fromkeys(ALL_QUEUES, 0.0)
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(_STATE_QUERY).all()
        for status, task_type, provider_type, queue, count in rows:
            tasks.add_metric([status, task_type, provider_type or NONE, queue], float(count))
            if status == TaskStatus.PENDING.value:
                depth[queue] = depth.get(queue, 0.0) + float(count)
        yield tasks
        queues = GaugeMetricFamily(
            "atelier_queue_depth", "PENDING tasks per queue (from the database).", labels=["queue"]
        )
        for name, pending in sorted(depth.items()):
            queues.add_metric([name], pending)
        yield queues
        if self.runtime.settings.embedded:
            workers = GaugeMetricFamily(
                "atelier_workers",
                "Running Celery workers known to this process (embedded mode: this process's worker, 1 or 0).",
                labels=["mode"],
            )
            workers.add_metric(["embedded"], 1.0 if self.runtime.embedded_worker is not None else 0.0)
            yield workers


class _ProcessRegistry:
    """The process's default registry as one collector of a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(runtime: Runtime | None = None) -> bytes:
    """The metrics in Prometheus text format: events (this process, or all of the host in multiprocess mode)
    plus, with a runtime, the database state."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessRegistry())
    if runtime is not None:
        registry.register(StateCollector(runtime))
    return generate_latest(registry)


# ------------------------------------------------------------------------------------ endpoint


async def metrics_access(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal | None:
    """Open when ``metrics.public``; otherwise an admin token (401 without one, 403 for other roles).

    The figures are fleet-wide (every tenant's tasks), so a tenant's service token may not read them.
    """
    if runtime.settings.metrics.public:
        return None
    principal = await get_principal(runtime, credentials)
    if principal.role is not Role.ADMIN:
        raise ForbiddenError("metrics cover every tenant: they need an admin token")
    return principal


def metrics(request: Request, _principal: Annotated[Principal | None, Depends(metrics_access)]) -> Response:
    """Prometheus metrics of this deployment (text exposition format)."""
    runtime: Runtime = request.app.state.runtime
    return Response(content=exposition(runtime), media_type=CONTENT_TYPE_LATEST)
