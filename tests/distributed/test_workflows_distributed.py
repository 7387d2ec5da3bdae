"""Workflows on PostgreSQL + Redis with real `atelier worker` processes: DAGs across workers, crashes mid-step."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task
from atelier.tasks.transitions import transition
from tests.api.helpers import runtime_of
from tests.distributed.conftest import ClusterFactory
from tests.engine.test_workflows_e2e import (
    BASE,
    assert_diamond_completed,
    claims,
    create,
    diamond,
    generate,
    get,
    steps_of,
    summary,
    ts,
    wait_end,
    wait_for,
    workflow_tasks,
)

pytestmark = pytest.mark.integration


def test_diamond_of_image_adjusters_on_two_workers(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    cluster.start_worker(concurrency=2)
    cluster.start_worker(concurrency=2, pool="threads")
    api = cluster.client()
    created = create(api, *diamond())
    assert created["status"] == "RUNNING"
    wf = wait_end(api, created["id"], timeout=45)
    assert_diamond_completed(api, wf)
    owners = {api.get(s["task_id"])["executor_instance"] for s in wf["steps"]}
    assert all(owners)


def test_wide_fan_in_starts_the_join_exactly_once(redis_cluster: ClusterFactory) -> None:
    """Branches finishing together on different workers: each completion plans under the workflow's row lock."""
    cluster = redis_cluster()
    cluster.start_worker(concurrency=3)
    cluster.start_worker(concurrency=3, pool="threads")
    api = cluster.client()
    branches = [f"b{n}" for n in range(6)]
    created = create(
        api,
        generate("root", ["ok"]),
        *(generate(b, ["ok"], "root") for b in branches),
        generate("join", ["ok"], *branches),
    )
    wf = wait_end(api, created["id"], timeout=45)
    assert wf["status"] == "COMPLETED", summary(wf)
    assert (wf["completed_steps"], wf["progress"]) == (8, 1.0)
    steps = steps_of(wf)
    assert len(workflow_tasks(api, wf["id"])) == 8  # one task per step: the join was created once
    for step in steps.values():
        assert api.side_effects(step["task_id"]) == 1 and claims(api, step["task_id"]) == 1
    join = api.get(steps["join"]["task_id"])
    assert all(ts(join["created_at"]) >= ts(api.get(steps[b]["task_id"])["completed_at"]) for b in branches)
    assert wf["final_step_result"] == steps["join"]["result"]


def test_killed_worker_mid_step_the_workflow_still_completes_once(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    created = create(
        api,
        generate("first", ["ok"]),
        generate("long", ["slow", "ok"], "first", slow=60),
        generate("side", ["ok"], "first"),
        generate("last", ["ok"], "long", "side"),
    )
    running = wait_for(api, created["id"], lambda wf: steps_of(wf)["long"]["status"] == "RUNNING", timeout=30)
    long_task = steps_of(running)["long"]["task_id"]
    executing = api.wait(long_task, {"EXECUTING"}, timeout=30)
    first_owner = executing["executor_instance"]
    assert get(api, created["id"])["status"] == "RUNNING"
    cluster.kill_worker(0)  # kill -9 mid-step
    cluster.start_worker(concurrency=1)
    wf = wait_end(api, created["id"], timeout=50)
    assert wf["status"] == "COMPLETED", summary(wf)
    assert (wf["completed_steps"], wf["progress"]) == (4, 1.0)
    steps = steps_of(wf)
    assert steps["long"]["task_id"] == long_task  # the step kept its task: it was resumed, not replaced
    resumed = api.get(long_task)
    assert resumed["is_resumed"] is True and resumed["resume_attempt_count"] == 1
    assert resumed["executor_instance"] != first_owner
    for sid, step in steps.items():
        assert step["status"] == "COMPLETED"
        assert api.side_effects(step["task_id"]) == 1, sid  # every step's output happened exactly once
    assert len(workflow_tasks(api, wf["id"])) == 4
    last = api.get(steps["last"]["task_id"])
    assert ts(last["created_at"]) >= ts(resumed["completed_at"])
    assert get(api, wf["id"])["final_step_result"] == steps["last"]["result"]


def test_step_lost_beyond_its_resume_budget_fails_the_workflow(redis_cluster: ClusterFactory) -> None:
    """The reaper fails the step's task (WORKER_LOST); that terminal transition advances the workflow too."""
    cluster = redis_cluster(tasks={"max_resumes": 0})
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    created = create(
        api,
        generate("first", ["ok"]),
        generate("lost", ["slow"], "first", slow=60),
        generate("after", ["ok"], "lost"),
    )
    running = wait_for(api, created["id"], lambda wf: steps_of(wf)["lost"]["status"] == "RUNNING", timeout=30)
    lost_task = steps_of(running)["lost"]["task_id"]
    api.wait(lost_task, {"EXECUTING"}, timeout=30)
    cluster.kill_worker(0)
    wf = wait_end(api, created["id"], timeout=45)
    assert wf["status"] == "FAILED", summary(wf)
    steps = steps_of(wf)
    assert steps["first"]["status"] == "COMPLETED"
    assert steps["lost"]["status"] == "FAILED" and "giving up" in steps["lost"]["error_message"]
    assert api.get(lost_task)["error_category"] == "WORKER_LOST"
    assert steps["after"]["status"] == "SKIPPED" and steps["after"]["task_id"] is None
    assert wf["error_message"].startswith("step 'lost' failed: worker")
    assert api.side_effects(lost_task) == 0


def test_cancel_while_a_step_task_finishes_does_not_deadlock(redis_cluster: ClusterFactory) -> None:
    """A worker recording a step's outcome and a user cancelling the workflow must not lock in opposite orders.

    The worker (``TaskRunner._record``, like ``TaskService.cancel``) locks the task row and then, in the workflow
    hook, the workflow row; ``DELETE /workflows/{id}`` takes the running steps' task rows first, in the same order.
    """
    cluster = redis_cluster()
    api = cluster.client()  # no worker: the root step's task waits PENDING
    created = create(api, generate("a", ["ok"]), generate("b", ["ok"], "a"))
    task_id = uuid.UUID(steps_of(created)["a"]["task_id"])
    runtime = runtime_of(api)
    result: dict[str, Any] = {}

    def cancel_workflow() -> None:
        try:
            result["response"] = api.client.delete(f"{BASE}{created['id']}", headers=api.headers())
        except Exception as exc:  # reported below
            result["error"] = exc

    with runtime.sessions() as worker:
        task = worker.get(Task, task_id, with_for_update=True)  # 1. the task's outcome is being recorded
        assert task is not None
        canceller = threading.Thread(target=cancel_workflow)
        canceller.start()
        _wait_for_a_lock_wait(runtime)  # 2. the cancel holds the workflow row and waits for the task row
        transition(worker, task, TaskStatus.EXECUTING, message="claimed")
        transition(worker, task, TaskStatus.COMPLETED, message="done")  # 3. the hook now locks the workflow
        worker.commit()
    canceller.join(timeout=20)
    assert "error" not in result, result
    response = result["response"]
    assert response.status_code == 200, response.text  # no deadlock: the cancel ran after the step finished
    wf = get(api, created["id"])
    assert wf["status"] == "CANCELLED", summary(wf)
    assert steps_of(wf)["a"]["status"] == "COMPLETED"
    b_task = steps_of(wf)["b"]["task_id"]  # started by the finishing step, then cancelled with the workflow
    assert steps_of(wf)["b"]["status"] == "CANCELLED"
    assert b_task is not None and api.get(b_task)["status"] == "CANCELLED"


def _wait_for_a_lock_wait(runtime: Any, timeout: float = 10.0) -> None:
    """Until some backend of this test's database waits for a row lock."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + timeout
    with runtime.engine.connect() as conn:
        while conn.execute(query).scalar_one() == 0:
            assert time.monotonic() < deadline, "the cancel never waited for the task row"
            time.sleep(0.02)
            conn.rollback()
