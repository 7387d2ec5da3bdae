"""Queue and worker monitoring against real `atelier worker` processes (PostgreSQL + Redis, Celery inspect)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from atelier.monitoring.workers import MAX_WAIT_SECONDS, STALE_AFTER_SECONDS
from atelier.providers.registry import ALL_QUEUES
from tests.conftest import Api
from tests.distributed.conftest import ClusterFactory

pytestmark = pytest.mark.integration

WORKERS = "/api/v1/monitoring/workers"
QUEUES = "/api/v1/monitoring/queues"
HEALTH = "/api/v1/monitoring/workers/health"
SLOW = {"task_type": "GENERATION", "prompt": "p", "config": {"script": ["slow"], "slow_seconds": 60}}


def fetch(api: Api, path: str) -> dict[str, Any]:
    """GET a monitoring endpoint and assert it answered."""
    response = api.client.get(path, headers=api.headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def poll(api: Api, path: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    """GET ``path`` until ``ready(body)`` (the worker snapshot is cached for a couple of seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        body = fetch(api, path)
        if ready(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never became ready: {body}")
        time.sleep(0.1)


def worker(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """One worker of a WorkerStatsResponse, if listed."""
    return next((w for w in body["workers"] if w["name"] == name), None)


def queue(body: dict[str, Any], name: str) -> dict[str, Any]:
    """One queue of a QueueStatsResponse."""
    found: dict[str, Any] = next(q for q in body["queues"] if q["name"] == name)
    return found


def test_workers_appear_with_their_concurrency_and_queues(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    prefork = cluster.start_worker(concurrency=2)
    threads = cluster.start_worker(concurrency=3, pool="threads")
    api = cluster.client()

    body = poll(api, WORKERS, lambda b: worker(b, prefork) is not None and worker(b, threads) is not None)

    assert body["total_workers"] == 2
    assert body["total_capacity"] == 5
    assert body["total_active"] == 0
    assert body["workers_at_capacity"] == 0
    one, two = worker(body, prefork), worker(body, threads)
    assert one is not None and two is not None
    assert one["concurrency"] == 2
    assert two["concurrency"] == 3
    for info in (one, two):
        assert info["queues"] == list(ALL_QUEUES)  # logical names: the test's queue prefix is removed
        assert info["has_capacity"] is True
        assert info["utilization_pct"] == 0.0
    assert two["memory_mb"] > 0  # a thread pool has no children: its main process is the whole worker
    assert one["memory_mb"] is None or one["memory_mb"] > 0  # prefork children need the atelier_memory command

    queues = fetch(api, QUEUES)
    assert [q["name"] for q in queues["queues"]] == list(ALL_QUEUES)
    assert all(q["active_workers"] == 2 for q in queues["queues"])
    health = fetch(api, HEALTH)
    assert health["healthy"] is True
    assert health["total_workers"] == 2
    assert health["workers_with_capacity"] == 2
    assert health["queues_with_workers"] == list(ALL_QUEUES)
    assert health["queues_without_workers"] == []


def test_running_task_is_active_on_its_worker_and_queue(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    name = cluster.start_worker(concurrency=2)
    api = cluster.client()
    task = api.create(SLOW)
    api.wait(task["id"], {"EXECUTING"})

    body = poll(api, WORKERS, lambda b: b["total_active"] == 1)
    info = worker(body, name)
    assert info is not None
    assert info["active_tasks"] == 1
    assert info["utilization_pct"] == 50.0
    assert info["has_capacity"] is True
    assert body["total_utilization_pct"] == 50.0
    queues = poll(api, QUEUES, lambda b: queue(b, "fal")["active_tasks"] == 1)
    assert queue(queues, "fal")["active_workers"] == 1
    assert queue(queues, "fal")["depth"] == 0
    assert queue(queues, "fal")["avg_wait_time_ms"] is not None
    assert queue(queues, "inference")["active_tasks"] == 0

    api.client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=api.headers())
    assert api.wait(task["id"])["status"] == "CANCELLED"
    done = poll(api, WORKERS, lambda b: b["total_active"] == 0 and b["workers"][0]["tasks_completed_total"] >= 1)
    assert done["workers"][0]["tasks_per_minute"] > 0


def test_saturated_worker_makes_health_false(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    task = api.create(SLOW)
    api.wait(task["id"], {"EXECUTING"})

    health = poll(api, HEALTH, lambda b: b["workers_with_capacity"] == 0)
    assert health["healthy"] is False
    assert health["total_workers"] == 1
    assert fetch(api, WORKERS)["workers_at_capacity"] == 1

    api.client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=api.headers())
    api.wait(task["id"])
    assert poll(api, HEALTH, lambda b: b["healthy"])["workers_with_capacity"] == 1


def test_killed_worker_disappears_within_the_documented_bound(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    name = cluster.start_worker(concurrency=2)
    api = cluster.client()
    poll(api, WORKERS, lambda b: worker(b, name) is not None)

    cluster.kill_worker(0)
    killed = time.monotonic()
    body = poll(api, WORKERS, lambda b: worker(b, name) is None, timeout=30)

    # The bound is on the age of what is served; one request's own wait (MAX_WAIT_SECONDS) comes on top.
    assert time.monotonic() - killed <= STALE_AFTER_SECONDS + MAX_WAIT_SECONDS + 1.0
    assert body["total_workers"] == 0
    health = fetch(api, HEALTH)
    assert health["healthy"] is False
    assert health["queues_without_workers"] == list(ALL_QUEUES)


def test_requests_stay_bounded_when_no_worker_answers(redis_cluster: ClusterFactory) -> None:
    api = redis_cluster().client()  # no worker at all: every broadcast waits out its timeout
    started = time.monotonic()
    assert fetch(api, WORKERS)["total_workers"] == 0
    assert fetch(api, HEALTH)["healthy"] is False
    assert fetch(api, QUEUES)["total_active"] == 0
    assert time.monotonic() - started <= 3 * MAX_WAIT_SECONDS + 2.0


def test_requests_stay_bounded_when_the_broker_is_unreachable(redis_cluster: ClusterFactory) -> None:
    # Nothing listens on port 1: Celery's broadcast retries the connection for as long as it takes.
    api = redis_cluster(broker={"url": "redis://127.0.0.1:1/0"}).client()
    for _ in range(2):
        started = time.monotonic()
        health = fetch(api, HEALTH)
        assert time.monotonic() - started <= MAX_WAIT_SECONDS + 2.0
        assert health["healthy"] is False
        assert health["total_workers"] == 0
