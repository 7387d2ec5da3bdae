"""Queue and worker monitoring on the embedded engine, and the bounded snapshot cache used in distributed mode."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from atelier.core.runtime import Runtime
from atelier.monitoring.workers import SnapshotCollector, WorkerSample, WorkersSnapshot
from atelier.providers.registry import ALL_QUEUES
from tests.conftest import Api, AppFactory

PATHS = ["/api/v1/monitoring/queues", "/api/v1/monitoring/workers", "/api/v1/monitoring/workers/health"]


def gen(**extra: Any) -> dict[str, Any]:
    """A generation task body (scripted provider, queue ``fal``)."""
    return {"task_type": "GENERATION", "prompt": "p", **extra}


def slow(seconds: float = 30.0) -> dict[str, Any]:
    """A generation task that runs until cancelled (or ``seconds``)."""
    return gen(config={"script": ["slow"], "slow_seconds": seconds})


def fetch(api: Api, path: str) -> dict[str, Any]:
    """GET a monitoring endpoint and assert it answered."""
    response = api.client.get(path, headers=api.headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def queue(body: dict[str, Any], name: str) -> dict[str, Any]:
    """One queue of a QueueStatsResponse."""
    found: dict[str, Any] = next(q for q in body["queues"] if q["name"] == name)
    return found


def runtime_of(api: Api) -> Runtime:
    """The app's runtime."""
    runtime: Runtime = api.client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def cancel(api: Api, task_id: str) -> None:
    """Cancel a task and wait until it is CANCELLED."""
    api.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=api.headers())
    assert api.wait(task_id)["status"] == "CANCELLED"


# ------------------------------------------------------------------------------------------------ API


@pytest.mark.parametrize("path", PATHS)
def test_monitoring_requires_authentication(idle_api: Api, path: str) -> None:
    assert idle_api.client.get(path).status_code == 401
    assert idle_api.client.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401


def test_embedded_worker_is_listed_with_its_concurrency_and_queues(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=3)
    worker = runtime_of(api).embedded_worker
    assert worker is not None

    body = fetch(api, "/api/v1/monitoring/workers")

    assert body["total_workers"] == 1
    assert body["total_capacity"] == 3
    assert body["total_active"] == 0
    assert body["workers_at_capacity"] == 0
    assert body["total_utilization_pct"] == 0.0
    assert body["timestamp"]
    (info,) = body["workers"]
    assert info["name"] == worker.hostname
    assert info["concurrency"] == 3
    assert info["queues"] == list(ALL_QUEUES)  # logical names
    assert info["active_tasks"] == 0
    assert info["has_capacity"] is True
    assert info["memory_mb"] > 0


def test_running_task_is_active_on_the_worker_and_in_its_queue(api: Api) -> None:
    task = api.create(slow())
    api.wait(task["id"], {"EXECUTING"})

    workers = fetch(api, "/api/v1/monitoring/workers")
    (info,) = workers["workers"]
    assert info["active_tasks"] == 1
    assert info["utilization_pct"] == 50.0  # 1 of 2
    assert info["has_capacity"] is True
    assert workers["total_active"] == 1
    assert workers["total_utilization_pct"] == 50.0

    queues = fetch(api, "/api/v1/monitoring/queues")
    fal = queue(queues, "fal")
    assert fal["active_tasks"] == 1
    assert fal["active_workers"] == 1
    assert fal["depth"] == 0
    assert fal["avg_wait_time_ms"] is not None and fal["avg_wait_time_ms"] >= 0
    assert queues["total_active"] == 1
    assert queue(queues, "inference")["active_tasks"] == 0

    cancel(api, task["id"])
    assert fetch(api, "/api/v1/monitoring/workers")["total_active"] == 0
    assert queue(fetch(api, "/api/v1/monitoring/queues"), "fal")["active_tasks"] == 0


def test_saturated_worker_has_no_capacity_and_is_unhealthy(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)
    task = api.create(slow())
    api.wait(task["id"], {"EXECUTING"})

    workers = fetch(api, "/api/v1/monitoring/workers")
    assert workers["workers"][0]["has_capacity"] is False
    assert workers["workers"][0]["utilization_pct"] == 100.0
    assert workers["workers_at_capacity"] == 1
    health = fetch(api, "/api/v1/monitoring/workers/health")
    assert health["healthy"] is False
    assert health["total_workers"] == 1
    assert health["workers_with_capacity"] == 0

    cancel(api, task["id"])
    assert fetch(api, "/api/v1/monitoring/workers/health")["healthy"] is True


def test_completed_tasks_are_counted(api: Api) -> None:
    for _ in range(2):
        task = api.create(gen())
        assert api.wait(task["id"])["status"] == "COMPLETED"

    fal = queue(fetch(api, "/api/v1/monitoring/queues"), "fal")
    assert fal["tasks_completed_last_hour"] == 2
    assert fal["avg_wait_time_ms"] is not None
    (info,) = fetch(api, "/api/v1/monitoring/workers")["workers"]
    assert info["tasks_completed_total"] == 2
    assert info["tasks_per_minute"] > 0


def test_depth_counts_pending_tasks_per_queue(app_factory: AppFactory) -> None:
    api = app_factory(worker=False)
    for _ in range(3):
        api.create(gen())
    api.create(gen(queue_name="custom-q"))

    body = fetch(api, "/api/v1/monitoring/queues")

    names = [q["name"] for q in body["queues"]]
    assert names[: len(ALL_QUEUES)] == list(ALL_QUEUES)
    assert "custom-q" in names
    assert queue(body, "fal")["depth"] == 3
    assert queue(body, "custom-q")["depth"] == 1
    assert queue(body, "inference")["depth"] == 0
    assert body["total_pending"] == 4
    assert body["total_active"] == 0
    assert all(q["active_workers"] == 0 and q["avg_wait_time_ms"] is None for q in body["queues"])


def test_health_without_worker_is_false(app_factory: AppFactory) -> None:
    api = app_factory(worker=False)

    health = fetch(api, "/api/v1/monitoring/workers/health")
    assert health["healthy"] is False
    assert health["total_workers"] == 0
    assert health["workers_with_capacity"] == 0
    assert health["queues_with_workers"] == []
    assert health["queues_without_workers"] == list(ALL_QUEUES)
    assert fetch(api, "/api/v1/monitoring/workers")["workers"] == []


def test_health_with_worker_is_true(api: Api) -> None:
    health = fetch(api, "/api/v1/monitoring/workers/health")
    assert health["healthy"] is True
    assert health["total_workers"] == 1
    assert health["workers_with_capacity"] == 1
    assert health["queues_with_workers"] == list(ALL_QUEUES)
    assert health["queues_without_workers"] == []


# ------------------------------------------------------------------------------------------------ snapshot cache


def snapshot(age: float = 0.0) -> WorkersSnapshot:
    """A one-worker snapshot whose collection started ``age`` seconds ago."""
    return WorkersSnapshot((WorkerSample(name="w@h", concurrency=2, queues=("inference",)),), time.monotonic() - age)


def test_collector_reuses_a_fresh_snapshot() -> None:
    calls: list[int] = []

    def fetch_once() -> WorkersSnapshot:
        calls.append(1)
        return snapshot()

    collector = SnapshotCollector(fetch_once, ttl=60.0, max_wait=5.0)
    first = collector.get()
    assert collector.get() is first
    assert len(calls) == 1


def test_collector_answers_without_waiting_for_a_hung_refresh() -> None:
    release = threading.Event()
    finished = threading.Event()

    def hang() -> WorkersSnapshot:
        release.wait(30)
        finished.set()
        return snapshot()

    collector = SnapshotCollector(hang, ttl=60.0, max_wait=0.05)
    try:
        result = collector.get()
        assert not finished.is_set()  # the answer did not wait for the broker
        assert result.workers == ()
        # Further requests do not start more refreshes or wait for the hung one beyond max_wait.
        assert collector.get().workers == ()
    finally:
        release.set()
    assert finished.wait(5)
    deadline = time.monotonic() + 5
    while not collector.get().workers:  # once the refresh lands, it is served
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_collector_serves_a_recent_snapshot_while_refreshing_but_never_a_stale_one() -> None:
    results = [snapshot(age=1.0)]
    release = threading.Event()

    def fetch_next() -> WorkersSnapshot:
        if results:
            return results.pop()
        release.wait(30)
        return WorkersSnapshot((), time.monotonic())

    collector = SnapshotCollector(fetch_next, ttl=0.5, max_wait=5.0, stale_after=10.0)
    try:
        assert len(collector.get().workers) == 1  # the first request waits for the first refresh
        started = time.monotonic()
        again = collector.get()  # expired (ttl) but not stale: served at once while the next refresh hangs
        assert time.monotonic() - started < 2.5  # did not sit out max_wait (5 s)
        assert len(again.workers) == 1
    finally:
        release.set()

    results.append(snapshot(age=100.0))  # older than stale_after: never served
    stale = SnapshotCollector(fetch_next, ttl=0.5, max_wait=1.0, stale_after=10.0)
    assert stale.get().workers == ()


def test_collector_survives_a_failing_refresh() -> None:
    def broken() -> WorkersSnapshot:
        raise ConnectionError("broker down")

    collector = SnapshotCollector(broken, ttl=60.0, max_wait=1.0)
    assert collector.get().workers == ()
    assert collector.get().workers == ()
