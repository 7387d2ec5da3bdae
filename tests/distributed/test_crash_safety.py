"""Nothing accepted is lost when processes die or the broker forgets its queues."""

from __future__ import annotations

import pytest

from tests.distributed.conftest import ClusterFactory
from tests.distributed.services import flush_redis_prefix
from tests.engine.test_lifecycle import generation

pytestmark = pytest.mark.integration


def test_killed_worker_task_is_resumed_once(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    task = api.create(generation(["slow", "ok"], config={"script": ["slow", "ok"], "slow_seconds": 60}))
    running = api.wait(task["id"], {"EXECUTING"})
    first_owner = running["executor_instance"]
    cluster.kill_worker(0)  # kill -9 the worker and its pool children mid-run
    cluster.start_worker(concurrency=1)
    done = api.wait(task["id"], timeout=60)
    assert done["status"] == "COMPLETED", done["errors"]
    assert done["is_resumed"] is True and done["resume_attempt_count"] == 1
    assert done["executor_instance"] != first_owner
    assert api.side_effects(task["id"]) == 1  # the provider's output happened exactly once


def test_killed_worker_task_fails_truthfully_when_budget_is_spent(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster(tasks={"max_resumes": 0})
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    task = api.create(generation(["slow"], config={"script": ["slow"], "slow_seconds": 60}))
    api.wait(task["id"], {"EXECUTING"})
    cluster.kill_worker(0)
    failed = api.wait(task["id"], timeout=60)
    assert failed["status"] == "FAILED"
    assert failed["error_category"] == "WORKER_LOST"
    assert "giving up" in failed["errors"][-1]
    assert api.side_effects(task["id"]) == 0


def test_lost_broker_queue_is_republished(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    api = cluster.client()  # API (and its reaper) up, no worker yet: tasks wait in Redis
    ids = [api.create(generation(["ok"]))["id"] for _ in range(3)]
    assert flush_redis_prefix(cluster.settings.broker.queue_prefix) > 0  # the broker loses every message
    cluster.start_worker(concurrency=2)
    for task_id in ids:
        task = api.wait(task_id, timeout=60)
        assert task["status"] == "COMPLETED"
        assert api.side_effects(task_id) == 1


def test_cancel_reaches_a_worker_in_another_process(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    task = api.create(generation(["slow"], config={"script": ["slow"], "slow_seconds": 60}))
    api.wait(task["id"], {"EXECUTING"})
    assert api.client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=api.headers()).status_code == 200
    assert api.wait(task["id"], timeout=20)["status"] == "CANCELLED"
