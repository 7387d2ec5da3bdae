"""HTTP endpoints of queue and worker monitoring (`/api/v1/monitoring/queues`, `/workers`, `/workers/health`).

They are plain ``def`` endpoints: FastAPI runs them in its thread pool, so the database reads and the wait for a
worker snapshot (at most ``workers.MAX_WAIT_SECONDS``) never block the event loop. Any authenticated principal may
read them: the figures carry no tenant data.
"""

from __future__ import annotations

from fastapi import APIRouter

from atelier.core.deps import PrincipalDep, RuntimeDep
from atelier.monitoring.workers import (
    QueueStatsResponse,
    WorkerHealthResponse,
    WorkerStatsResponse,
    queue_stats,
    worker_health,
    worker_stats,
)

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])


@router.get("/queues", response_model=QueueStatsResponse, summary="Get Queue Stats")
def get_queue_stats(runtime: RuntimeDep, _principal: PrincipalDep) -> QueueStatsResponse:
    """Get queue depths, active task counts, wait times, and throughput.

    Returns statistics for all known Celery queues including: - Queue depth (pending tasks) - Active workers
    consuming the queue - Active and reserved tasks - Average wait time (time from created to started) - Tasks
    completed in the last hour
    """
    return queue_stats(runtime)


@router.get("/workers", response_model=WorkerStatsResponse, summary="Get Worker Stats")
def get_worker_stats(runtime: RuntimeDep, _principal: PrincipalDep) -> WorkerStatsResponse:
    """Get worker utilization, capacity, and throughput.

    Returns statistics for all active Celery workers including: - Worker name and queues - Concurrency and active
    tasks - Utilization percentage - Capacity status - Total tasks completed and throughput rate
    """
    return worker_stats(runtime)


@router.get("/workers/health", response_model=WorkerHealthResponse, summary="Get Workers Health")
def get_workers_health(runtime: RuntimeDep, _principal: PrincipalDep) -> WorkerHealthResponse:
    """Quick health check for worker availability.

    Returns a simple health status indicating: - Overall health (at least one worker with capacity) - Total
    workers and workers with available capacity - Queues with and without workers

    Use this endpoint for alerting on capacity issues. A worker that died is gone from the answer within
    ``workers.STALE_AFTER_SECONDS`` (5 s).
    """
    return worker_health(runtime)
