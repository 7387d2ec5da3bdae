"""Workflows end to end through the embedded worker: DAG execution, data flow, retries, failure, resume, cancel."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from PIL import Image
from sqlalchemy import func, select

from atelier.tasks.models import Task, TaskEvent
from tests.api.helpers import runtime_of
from tests.conftest import Api, AppFactory, b64_png
from tests.engine.test_image_adjuster_e2e import product_shot

BASE = "/api/v1/workflows/"
ENDED = {"COMPLETED", "FAILED", "CANCELLED"}


# ---------------------------------------------------------------------------------------------- helpers


def adjust(
    step_id: str, parent: str | None = None, *, depends_on: list[str] | None = None, **config: Any
) -> dict[str, Any]:
    """A LOCAL IMAGE_ADJUSTER step: a root with a small inline image, or fed by ``parent``'s result image."""
    step: dict[str, Any] = {"id": step_id, "task_type": "IMAGE_ADJUSTER", "config": dict(config)}
    if parent is None:
        step["config"].setdefault("input_image", b64_png((40, 20)))
    else:
        step["input_mappings"] = [{"from_step": parent, "from_field": "result_image_path", "to_field": "input_image"}]
    if depends_on:
        step["depends_on"] = depends_on
    return step


def generate(
    step_id: str, script: list[str], *depends_on: str, slow: float | None = None, **extra: Any
) -> dict[str, Any]:
    """A scripted GENERATION step."""
    config: dict[str, Any] = {"script": script}
    if slow is not None:
        config["slow_seconds"] = slow
    step: dict[str, Any] = {
        "id": step_id,
        "task_type": "GENERATION",
        "config": {"prompt": f"step {step_id}", "config": config},
        "depends_on": list(depends_on),
    }
    step.update(extra)
    return step


def create(api: Api, *steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Create (and start) a workflow."""
    body = {"name": "e2e", "origin_instance": "tests", "steps": list(steps), **fields}
    response = api.client.post(BASE, json=body, headers=api.headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get(api: Api, workflow_id: str) -> dict[str, Any]:
    """GET a workflow."""
    response = api.client.get(f"{BASE}{workflow_id}", headers=api.headers())
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_for(
    api: Api, workflow_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 8.0
) -> dict[str, Any]:
    """Poll the workflow until ``until`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        wf = get(api, workflow_id)
        if until(wf):
            return wf
        if time.monotonic() > deadline:
            raise AssertionError(f"workflow {workflow_id} never got there: {summary(wf)}")
        time.sleep(0.01)


def wait_end(api: Api, workflow_id: str, timeout: float = 8.0) -> dict[str, Any]:
    """Poll until the workflow is COMPLETED, FAILED or CANCELLED."""
    return wait_for(api, workflow_id, lambda wf: wf["status"] in ENDED, timeout)


def summary(wf: dict[str, Any]) -> dict[str, Any]:
    """Status of the workflow and each step, for failure messages."""
    return {
        "status": wf["status"],
        "error": wf["error_message"],
        "steps": {s["step_id"]: (s["status"], s["error_message"]) for s in wf["steps"]},
    }


def steps_of(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Steps by step id."""
    return {s["step_id"]: s for s in wf["steps"]}


def ts(value: str) -> datetime:
    """An API timestamp."""
    return datetime.fromisoformat(value)


def image_size(api: Api, path: str) -> tuple[int, int]:
    """Size of a stored image."""
    response = api.client.get(f"/api/v1/storage/images/{path}", headers=api.headers())
    assert response.status_code == 200, path
    size: tuple[int, int] = Image.open(io.BytesIO(response.content)).size
    return size


def claims(api: Api, task_id: str) -> int:
    """How many times a worker took the task to run it (EXECUTING events)."""
    with runtime_of(api).sessions() as session:
        stmt = (
            select(func.count())
            .select_from(TaskEvent)
            .where(TaskEvent.task_id == uuid.UUID(task_id), TaskEvent.status == "EXECUTING")
        )
        return int(session.execute(stmt).scalar_one())


def workflow_tasks(api: Api, workflow_id: str) -> set[str]:
    """Ids of every task created for the workflow."""
    with runtime_of(api).sessions() as session:
        rows = session.execute(select(Task.id).where(Task.workflow_id == workflow_id)).scalars()
        return {str(r) for r in rows}


def status_v2(api: Api, request_id: str) -> tuple[int, dict[str, Any]]:
    """GET /v2/status/{id}."""
    response = api.client.get(f"/v2/status/{request_id}", headers=api.headers())
    body: dict[str, Any] = response.json()
    return response.status_code, body


def job_v1(api: Api, job_id: str) -> tuple[int, dict[str, Any]]:
    """GET /v1/jobs/{id}."""
    response = api.client.get(f"/v1/jobs/{job_id}", headers=api.headers())
    body: dict[str, Any] = response.json()
    return response.status_code, body


def upload(api: Api, path: str, data: bytes) -> None:
    """Put an image into the tenant's storage."""
    response = api.client.post(
        f"/api/v1/storage/images/{path}", files={"file": ("x.png", data, "image/png")}, headers=api.headers()
    )
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------- the diamond

DIAMOND_SIZES = {"a": (40, 40), "b": (40, 20), "c": (40, 80), "d": (40, 40), "e": (10, 10), "f": (40, 50)}
DIAMOND_PARENTS = {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"], "f": ["d"]}


def diamond() -> list[dict[str, Any]]:
    """a → b, a → c, (b, c) → d, d → e, d → f; each step really transforms its parent's image."""
    return [
        adjust("a", mode="pad", aspect_ratio=1),  # 40×20 → 40×40
        adjust("b", "a", mode="crop", aspect_ratio=2),  # → 40×20
        adjust("c", "a", mode="pad", aspect_ratio=0.5),  # → 40×80
        adjust("d", "b", depends_on=["c"], mode="pad", aspect_ratio=1),  # b's 40×20 → 40×40
        adjust("e", "d", mode="scale", target_width=10, target_height=10),  # → 10×10
        adjust("f", "d", mode="pad", aspect_ratio="4:5"),  # → 40×50
    ]


def assert_diamond_completed(api: Api, wf: dict[str, Any]) -> None:
    """Every check of a finished diamond (shared with the distributed suite)."""
    assert wf["status"] == "COMPLETED", summary(wf)
    assert (wf["total_steps"], wf["completed_steps"], wf["progress"]) == (6, 6, 1.0)
    assert wf["error_message"] is None and wf["errors"] == []
    assert wf["completed_at"] and ts(wf["completed_at"]) >= ts(wf["started_at"])
    assert wf["current_step"] is None
    assert [s["step_id"] for s in wf["steps"]] == list("abcdef")
    steps = steps_of(wf)
    tasks: dict[str, dict[str, Any]] = {}
    for sid, step in steps.items():
        assert step["status"] == "COMPLETED" and step["task_id"] and step["error_message"] is None, step
        task = api.get(step["task_id"])
        tasks[sid] = task
        assert task["status"] == "COMPLETED" and task["workflow_id"] == wf["id"]
        assert step["result"]["task_id"] == task["id"]
        assert step["result"]["result_image_path"] == task["result_image_path"]
        assert image_size(api, task["result_image_path"]) == DIAMOND_SIZES[sid], sid
        # each task ran exactly once
        assert task["retry_count"] == 0 and task["is_resumed"] is False
        assert claims(api, task["id"]) == 1, sid
    assert len({t["id"] for t in tasks.values()}) == 6
    assert workflow_tasks(api, wf["id"]) == {t["id"] for t in tasks.values()}
    # data flowed from parent to child: the child's stored input IS the parent's output
    for sid, parent in {"b": "a", "c": "a", "d": "b", "e": "d", "f": "d"}.items():
        assert tasks[sid]["input_image_path"] == tasks[parent]["result_image_path"], sid
    assert tasks["a"]["input_image_path"].endswith("/inputs/input_image_path.png")
    # dependants started only after all their parents completed
    for sid, parents in DIAMOND_PARENTS.items():
        for parent in parents:
            assert ts(steps[sid]["started_at"]) >= ts(steps[parent]["completed_at"]), (sid, parent)
            assert ts(tasks[sid]["created_at"]) >= ts(tasks[parent]["completed_at"]), (sid, parent)
            assert ts(tasks[sid]["started_at"]) >= ts(tasks[parent]["completed_at"]), (sid, parent)
    assert wf["final_step_id"] == "f"
    assert wf["final_step_result"] == steps["f"]["result"]


def test_diamond_of_image_adjusters_completes(api: Api) -> None:
    created = create(api, *diamond())
    assert created["status"] == "RUNNING"
    wf = wait_end(api, created["id"])
    assert_diamond_completed(api, wf)
    # the status surfaces answer for the workflow id too
    code, v2 = status_v2(api, wf["id"])
    assert code == 200 and v2["status"] == "COMPLETED" and v2["request_id"] == wf["id"]
    final_path = steps_of(wf)["f"]["result"]["result_image_path"]
    assert v2["result"]["image_url"].endswith(f"/api/v1/storage/images/{final_path}")
    code, job = job_v1(api, wf["id"])
    assert code == 200
    assert (job["job_id"], job["status"], job["scenes_total"], job["scenes_completed"]) == (wf["id"], "completed", 6, 6)
    assert job["result"]["image_url"] == v2["result"]["image_url"]
    assert job["started_at"] and job["completed_at"] and "error" not in job


# ---------------------------------------------------------------------------------------------- scheduling


def test_branches_run_in_parallel_and_fan_in_waits_for_both(api: Api) -> None:
    created = create(
        api,
        generate("a", ["ok"]),
        generate("fast", ["slow"], "a", slow=0.3),
        generate("slow", ["slow"], "a", slow=3),
        generate("join", ["ok"], "fast", "slow"),
    )
    # the fast branch finished while the slow one still runs: the join has not started
    mid = wait_for(api, created["id"], lambda wf: steps_of(wf)["fast"]["status"] == "COMPLETED")
    steps = steps_of(mid)
    assert steps["slow"]["status"] == "RUNNING", summary(mid)
    assert steps["join"]["status"] == "PENDING" and steps["join"]["task_id"] is None, summary(mid)
    assert mid["status"] == "RUNNING" and mid["completed_steps"] == 2
    _, v2 = status_v2(api, created["id"])
    assert v2["status"] == "IN_PROGRESS" and v2["progress"] == 50.0
    _, job = job_v1(api, created["id"])
    assert (job["status"], job["scenes_completed"], job["scenes_total"]) == ("processing", 2, 4)
    assert "result" not in job and "error" not in job

    wf = wait_end(api, created["id"])
    assert wf["status"] == "COMPLETED", summary(wf)
    tasks = {sid: api.get(s["task_id"]) for sid, s in steps_of(wf).items()}
    fast, slow, join = tasks["fast"], tasks["slow"], tasks["join"]
    # both branch tasks existed and ran at the same time
    assert ts(fast["created_at"]) < ts(slow["completed_at"]) and ts(slow["created_at"]) < ts(fast["completed_at"])
    assert max(ts(fast["started_at"]), ts(slow["started_at"])) < min(ts(fast["completed_at"]), ts(slow["completed_at"]))
    # the join was created once, after the slower parent
    assert ts(join["created_at"]) >= ts(slow["completed_at"])
    assert ts(steps_of(wf)["join"]["started_at"]) >= ts(steps_of(wf)["slow"]["completed_at"])
    for task in tasks.values():
        assert task["status"] == "COMPLETED"
        assert api.side_effects(task["id"]) == 1
    assert len(workflow_tasks(api, wf["id"])) == 4


def test_step_retries_follow_max_retries(api: Api) -> None:
    created = create(
        api,
        generate("retried", ["retry", "ok"], max_retries=1),
        generate("exhausted", ["retry", "ok"], max_retries=0),
    )
    wf = wait_end(api, created["id"])
    steps = steps_of(wf)
    retried = steps["retried"]
    assert retried["status"] == "COMPLETED", summary(wf)
    assert (retried["retry_count"], retried["max_retries"]) == (1, 1)
    task = api.get(retried["task_id"])
    assert (task["status"], task["retry_count"], task["max_retries"]) == ("COMPLETED", 1, 1)
    assert [r["step"] for r in task["service_requests"]] == ["retry", "ok"]
    assert api.side_effects(task["id"]) == 1
    exhausted = steps["exhausted"]
    assert exhausted["status"] == "FAILED" and exhausted["retry_count"] == 0
    assert exhausted["error_message"] == "upstream returned 503"
    assert api.get(exhausted["task_id"])["status"] == "FAILED"
    assert wf["status"] == "FAILED"


# ---------------------------------------------------------------------------------------------- failure, resume


def test_failure_skips_dependants_and_resume_restarts_only_the_unfinished(api: Api) -> None:
    created = create(
        api,
        generate("a", ["ok"]),
        generate("bad", ["fatal", "ok"], "a"),
        generate("c", ["ok"], "bad"),
        generate("d", ["ok"], "c"),
        generate("side", ["ok"], "a"),  # an independent branch
    )
    wf = wait_end(api, created["id"])
    assert wf["status"] == "FAILED", summary(wf)
    assert wf["error_message"] == "step 'bad' failed: upstream rejected the request"
    assert wf["errors"] == [wf["error_message"]]
    assert (wf["completed_steps"], wf["progress"], wf["final_step_result"]) == (2, 1.0, None)
    steps = steps_of(wf)
    assert {sid: s["status"] for sid, s in steps.items()} == {
        "a": "COMPLETED",
        "bad": "FAILED",
        "c": "SKIPPED",
        "d": "SKIPPED",
        "side": "COMPLETED",
    }
    assert steps["c"]["task_id"] is None and steps["d"]["task_id"] is None
    assert steps["bad"]["error_message"] == "upstream rejected the request"
    first_bad = steps["bad"]["task_id"]
    assert api.get(first_bad)["status"] == "FAILED"
    kept = {sid: steps[sid]["task_id"] for sid in ("a", "side")}
    assert workflow_tasks(api, wf["id"]) == {first_bad, *kept.values()}
    _, v2 = status_v2(api, wf["id"])
    assert v2["status"] == "ERROR" and "'bad'" in v2["error"]["message"]
    _, job = job_v1(api, wf["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "workflow_failed"
    assert "'bad'" in job["error"]["message"] and job["scenes_completed"] == 2 and job["scenes_total"] == 5

    response = api.client.post(f"{BASE}{wf['id']}/resume", headers=api.headers())
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["status"] == "RUNNING" and resumed["error_message"] is None
    steps = steps_of(resumed)
    assert {sid: steps[sid]["task_id"] for sid in kept} == kept  # completed steps are kept, not re-run
    assert steps["a"]["status"] == steps["side"]["status"] == "COMPLETED"
    assert steps["bad"]["status"] == "RUNNING" and steps["bad"]["task_id"] not in (None, first_bad)
    assert (steps["c"]["status"], steps["d"]["status"]) == ("PENDING", "PENDING")
    assert steps["c"]["error_message"] is None and steps["c"]["completed_at"] is None

    # a new task starts at attempt 1, so the script fails it again: the workflow fails again the same way
    again = wait_end(api, wf["id"])
    assert again["status"] == "FAILED", summary(again)
    assert len(again["errors"]) == 2 and again["error_message"] == wf["error_message"]
    assert steps_of(again)["c"]["status"] == "SKIPPED"
    for task_id in kept.values():
        assert api.side_effects(task_id) == 1 and claims(api, task_id) == 1
    assert api.get(first_bad)["status"] == "FAILED"
    assert len(workflow_tasks(api, wf["id"])) == 4


def test_resume_after_the_cause_is_fixed_completes(api: Api) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(blank, format="PNG")
    upload(api, "in/shot.png", blank.getvalue())  # no subject: margins cannot be kept
    created = create(
        api,
        adjust("keep", aspect_ratio=1),
        adjust("fit", input_image="in/shot.png", aspect_ratio=1, margin_top=0.1, margin_bottom=0.1),
        adjust("after", "fit", mode="scale", target_width=20, target_height=20),
    )
    failed = wait_end(api, created["id"])
    assert failed["status"] == "FAILED", summary(failed)
    steps = steps_of(failed)
    assert steps["fit"]["status"] == "FAILED" and steps["after"]["status"] == "SKIPPED"
    assert steps["keep"]["status"] == "COMPLETED"
    assert api.get(steps["fit"]["task_id"])["error_category"] == "INVALID_INPUT"
    keep_task, old_fit = steps["keep"]["task_id"], steps["fit"]["task_id"]

    upload(api, "in/shot.png", product_shot())  # now it has a subject
    assert api.client.post(f"{BASE}{created['id']}/resume", headers=api.headers()).status_code == 200
    wf = wait_end(api, created["id"])
    assert wf["status"] == "COMPLETED", summary(wf)
    steps = steps_of(wf)
    assert steps["keep"]["task_id"] == keep_task and claims(api, keep_task) == 1
    assert steps["fit"]["task_id"] != old_fit and steps["fit"]["status"] == "COMPLETED"
    after = api.get(steps["after"]["task_id"])
    assert after["input_image_path"] == steps["fit"]["result"]["result_image_path"]
    assert image_size(api, after["result_image_path"]) == (20, 20)
    assert (wf["completed_steps"], wf["progress"]) == (3, 1.0)
    assert wf["final_step_result"] == steps["after"]["result"]
    _, v2 = status_v2(api, wf["id"])
    assert v2["status"] == "COMPLETED" and v2["result"]["image_url"].endswith(after["result_image_path"])


def test_cleanup_after_resume_covers_every_task_of_the_workflow(api: Api) -> None:
    """A resumed step gets a new task; the superseded one still belongs to the workflow and must be cleaned too."""
    created = create(api, generate("a", ["ok"]), generate("bad", ["fatal"], "a"))
    first = wait_end(api, created["id"])
    assert first["status"] == "FAILED", summary(first)
    superseded = steps_of(first)["bad"]["task_id"]
    assert api.client.post(f"{BASE}{created['id']}/resume", headers=api.headers()).status_code == 200
    second = wait_end(api, created["id"])
    assert second["status"] == "FAILED", summary(second)
    current = {s["task_id"] for s in second["steps"]}
    assert superseded not in current
    everything = workflow_tasks(api, created["id"])
    assert everything == current | {superseded} and len(everything) == 3

    response = api.client.post(f"{BASE}{created['id']}/cleanup", headers=api.headers())
    assert response.status_code == 200, response.text
    report = response.json()["cleanup"]
    assert report["errors"] == []
    assert (report["tasks_processed"], report["tasks_cleaned"]) == (3, 3), report
    for task_id in everything:
        task = api.get(task_id)
        assert task["is_deleted"] is True, f"task {task_id} of the workflow was not cleaned up"
    a_task = steps_of(second)["a"]["task_id"]
    assert (
        api.client.get(f"/api/v1/storage/images?prefix=generations/{a_task}/", headers=api.headers()).json()["count"]
        == 0
    )


def test_cancel_running_workflow_stops_its_tasks(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)  # one slot: one root runs, the other waits PENDING in the queue
    created = create(
        api,
        generate("r1", ["slow"], slow=20),
        generate("r2", ["slow"], slow=20),
        generate("after", ["ok"], "r1", "r2"),
    )
    roots = {sid: steps_of(created)[sid]["task_id"] for sid in ("r1", "r2")}
    deadline = time.monotonic() + 5
    while not any(api.get(t)["status"] == "EXECUTING" for t in roots.values()):
        assert time.monotonic() < deadline, "no root started"
        time.sleep(0.01)
    running = next(t for t in roots.values() if api.get(t)["status"] == "EXECUTING")
    waiting = next(t for t in roots.values() if t != running)
    assert api.get(waiting)["status"] == "PENDING"
    _, v2 = status_v2(api, created["id"])
    assert v2["status"] == "IN_PROGRESS"
    _, job = job_v1(api, created["id"])
    assert job["status"] == "processing" and job["scenes_completed"] == 0 and job["scenes_total"] == 3

    response = api.client.delete(f"{BASE}{created['id']}", headers=api.headers())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    assert api.get(waiting)["status"] == "CANCELLED"  # a pending task is cancelled at once
    assert api.wait(running, timeout=5)["status"] == "CANCELLED"  # the running provider stops at its next check
    time.sleep(0.3)  # the freed slot must not pick up anything of the workflow
    wf = get(api, created["id"])
    assert wf["status"] == "CANCELLED", summary(wf)
    assert {s["step_id"]: s["status"] for s in wf["steps"]} == dict.fromkeys(("r1", "r2", "after"), "CANCELLED")
    assert steps_of(wf)["after"]["task_id"] is None
    assert api.get(waiting)["started_at"] is None and claims(api, waiting) == 0
    assert workflow_tasks(api, wf["id"]) == set(roots.values())
    for task_id in roots.values():
        assert api.side_effects(task_id) == 0
    _, v2 = status_v2(api, wf["id"])
    assert v2["status"] == "ERROR" and v2["error"]["code"] == 499
    _, job = job_v1(api, wf["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "cancelled"


# ---------------------------------------------------------------------------------------------- mappings at run time


def test_transforms_apply_at_run_time(api: Api) -> None:
    created = create(
        api,
        {
            **generate("g", ["ok"]),
            "config": {"prompt": "first", "width": 48, "height": 24, "config": {"script": ["ok"]}},
        },
        {
            **generate("named", ["ok"]),
            "input_mappings": [
                {"from_step": "g", "from_field": "result_image_path", "to_field": "prompt", "transform": "basename"},
                {"from_step": "g", "from_field": "height", "to_field": "width", "transform": "as_int"},
                {"from_step": "g", "from_field": "width", "to_field": "height"},
            ],
        },
        {
            **generate("plain", ["ok"]),
            "input_mappings": [{"from_step": "g", "from_field": "result_image_path", "to_field": "prompt"}],
        },
        {
            **generate("stringified", ["ok"]),
            "input_mappings": [
                {"from_step": "g", "from_field": "width", "to_field": "prompt", "transform": "as_string"}
            ],
        },
    )
    wf = wait_end(api, created["id"])
    assert wf["status"] == "COMPLETED", summary(wf)
    assert api.get(steps_of(wf)["stringified"]["task_id"])["prompt"] == "48"  # an int made a valid prompt
    steps = steps_of(wf)
    source = api.get(steps["g"]["task_id"])
    assert source["result_image_path"].endswith("/result.png")
    named = api.get(steps["named"]["task_id"])
    assert named["prompt"] == "result.png"  # basename applied
    assert (named["width"], named["height"]) == (24, 48)
    assert image_size(api, named["result_image_path"]) == (24, 48)  # the provider got the mapped values
    assert api.get(steps["plain"]["task_id"])["prompt"] == source["result_image_path"]  # no transform: as is


def test_mapping_errors_at_run_time_fail_the_step(api: Api) -> None:
    created = create(
        api,
        generate("g", ["ok"]),
        {
            **generate("bad_transform", ["ok"]),
            "input_mappings": [
                {"from_step": "g", "from_field": "fal_request_id", "to_field": "width", "transform": "as_int"}
            ],
        },
        {
            **generate("missing_field", ["ok"]),
            "input_mappings": [{"from_step": "g", "from_field": "reference_image_path", "to_field": "prompt"}],
        },
        generate("below", ["ok"], "bad_transform"),
    )
    wf = wait_end(api, created["id"])
    assert wf["status"] == "FAILED", summary(wf)
    steps = steps_of(wf)
    assert steps["g"]["status"] == "COMPLETED"
    bad = steps["bad_transform"]
    assert bad["status"] == "FAILED" and bad["task_id"] is None
    assert "'bad_transform'" in bad["error_message"] and "as_int" in bad["error_message"]
    assert "'req-1'" in bad["error_message"]
    missing = steps["missing_field"]
    assert missing["status"] == "FAILED" and missing["task_id"] is None
    assert "'reference_image_path'" in missing["error_message"]
    assert steps["below"]["status"] == "SKIPPED" and steps["below"]["task_id"] is None
    assert len(wf["errors"]) == 2
    assert len(workflow_tasks(api, wf["id"])) == 1


def test_a_step_refused_at_start_fails_and_its_dependants_are_skipped(api: Api) -> None:
    """A mapped value the step's task refuses (an int as prompt) fails the step when it starts; what is below it
    can never run and must be SKIPPED when the workflow ends FAILED."""
    created = create(
        api,
        {**generate("g", ["ok"]), "config": {"prompt": "first", "width": 48, "config": {"script": ["ok"]}}},
        {
            **generate("not_a_string", ["ok"]),
            "input_mappings": [{"from_step": "g", "from_field": "width", "to_field": "prompt"}],
        },
        generate("below", ["ok"], "not_a_string"),
    )
    wf = wait_end(api, created["id"])
    assert wf["status"] == "FAILED", summary(wf)
    steps = steps_of(wf)
    refused = steps["not_a_string"]
    assert refused["status"] == "FAILED" and refused["task_id"] is None
    assert refused["error_message"].startswith("could not start") and "prompt" in refused["error_message"]
    assert wf["error_message"].startswith("step 'not_a_string' failed")
    assert steps["below"]["task_id"] is None
    assert steps["below"]["status"] == "SKIPPED", summary(wf)
    assert (wf["completed_steps"], wf["progress"]) == (1, 1.0)


def test_status_surfaces_do_not_leak_workflows(api: Api) -> None:
    created = create(api, generate("g", ["ok"]))
    wait_end(api, created["id"])
    other = api.headers("globex")
    assert api.client.get(f"/v2/status/{created['id']}", headers=other).status_code == 404
    assert api.client.get(f"/v1/jobs/{created['id']}", headers=other).status_code == 404
    assert api.client.post(f"{BASE}{created['id']}/cleanup", headers=api.headers()).status_code == 200
    assert status_v2(api, created["id"])[0] == 404  # soft-deleted workflows are gone from the status surfaces
    assert job_v1(api, created["id"])[0] == 404


def test_pending_step_tasks_are_cancelled_behind_a_busy_worker(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1)
    blocker = api.create(  # holds the only slot until it is cancelled: the workflow cannot finish on its own
        {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 30}}
    )
    api.wait(blocker["id"], {"EXECUTING"})
    created = create(api, generate("root", ["ok"]), generate("next", ["ok"], "root"))
    root_task = steps_of(created)["root"]["task_id"]
    assert api.get(root_task)["status"] == "PENDING"
    response = api.client.delete(f"{BASE}{created['id']}", headers=api.headers())
    assert response.status_code == 200, response.text
    assert api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers()).status_code == 200
    assert api.wait(blocker["id"])["status"] == "CANCELLED"
    probe = api.create({"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}})
    assert api.wait(probe["id"])["status"] == "COMPLETED"  # the one slot has taken every earlier message
    task = api.get(root_task)
    assert task["status"] == "CANCELLED" and task["started_at"] is None and claims(api, root_task) == 0
    assert api.side_effects(root_task) == 0
    wf = get(api, created["id"])
    assert wf["status"] == "CANCELLED" and steps_of(wf)["next"]["task_id"] is None
