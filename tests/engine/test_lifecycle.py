"""Task lifecycle end to end through the real in-process Celery worker (threads, memory transport)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from tests.conftest import Api, AppFactory


def generation(script: list[str], **extra: Any) -> dict[str, Any]:
    """A GENERATION task whose scripted provider follows ``script``."""
    body: dict[str, Any] = {"task_type": "GENERATION", "prompt": "a red dress", "config": {"script": script}}
    body.update(extra)
    return body


def result_colour(api: Api, path: str) -> tuple[int, ...]:
    """The top-left pixel of a stored result."""
    response = api.client.get(f"/api/v1/storage/images/{path}", headers=api.headers())
    assert response.status_code == 200
    return tuple(Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((0, 0)))  # type: ignore[arg-type]


def test_success_runs_once_and_stores_output(api: Api) -> None:
    task = api.wait(api.create(generation(["ok"]))["id"])
    assert task["status"] == "COMPLETED"
    assert task["progress"] == 100.0
    assert task["retry_count"] == 0
    assert task["started_at"] and task["completed_at"] and task["completed_at"] >= task["started_at"]
    assert task["executor_type"] == "celery" and task["executor_instance"]
    assert task["celery_task_id"]
    assert task["fal_request_id"] == "req-1"
    assert result_colour(api, task["result_image_path"]) == (255, 0, 0)
    assert api.side_effects(task["id"]) == 1
    assert [r["step"] for r in task["service_requests"]] == ["ok"]


def test_retry_then_success(api: Api) -> None:
    task = api.wait(api.create(generation(["retry", "crash", "ok"]))["id"])
    assert task["status"] == "COMPLETED"
    assert task["retry_count"] == 2
    assert len(task["errors"]) == 2 and "retry 1/3" in task["errors"][0] and "RuntimeError" in task["errors"][1]
    assert [r["step"] for r in task["service_requests"]] == ["retry", "crash", "ok"]
    assert task["error_category"] is None
    assert api.side_effects(task["id"]) == 1


def test_permanent_failure_after_max_retries(api: Api) -> None:
    task = api.wait(api.create(generation(["retry"], config={"script": ["retry"], "max_retries": 2}))["id"])
    assert task["status"] == "FAILED"
    assert task["retry_count"] == 2
    assert task["max_retries"] == 2
    assert len(task["service_requests"]) == 3
    assert task["error_category"] == "PROVIDER_ERROR"
    assert task["errors"][-1] == "upstream returned 503"


def test_value_error_never_retries_nor_falls_back(api: Api) -> None:
    body = generation(["value", "ok"], fallback_provider_type="VERTEX")
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "FAILED"
    assert task["retry_count"] == 0
    assert task["error_category"] == "INVALID_INPUT"
    assert len(task["service_requests"]) == 1


def test_fallback_after_primary_exhausts_retries(api: Api) -> None:
    body = generation(
        ["retry"],
        config={"script": ["retry"], "max_retries": 1},
        active_provider_capabilities=["OUTPUT_SIZE"],
        fallback_provider_type="VERTEX",
        fallback_provider_config={"image_size": "2K"},
        fallback_provider_capabilities=["UPSCALE_2X"],
    )
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED"
    assert task["active_provider_capabilities"] == ["UPSCALE_2X"]
    assert any("fallback VERTEX activated" in e for e in task["errors"])
    assert result_colour(api, task["result_image_path"]) == (0, 0, 255)  # rendered by the fallback


def test_fatal_error_skips_retries_and_fails_without_fallback(api: Api) -> None:
    task = api.wait(api.create(generation(["fatal"]))["id"])
    assert task["status"] == "FAILED"
    assert task["retry_count"] == 0
    assert task["error_category"] == "PROVIDER_ERROR"


def test_fallback_failure_is_reported(api: Api) -> None:
    body = generation(
        ["fatal"], config={"script": ["fatal"], "fallback_script": ["fatal"]}, fallback_provider_type="VERTEX"
    )
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "FAILED"
    assert task["errors"][-1] == "fallback failed too"


def test_cancel_pending_is_immediate(idle_api: Api) -> None:
    created = idle_api.create(generation(["ok"]))
    response = idle_api.client.post(f"/api/v1/tasks/{created['id']}/cancel", headers=idle_api.headers())
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["error_category"] == "CANCELLED"
    again = idle_api.client.post(f"/api/v1/tasks/{created['id']}/cancel", headers=idle_api.headers())
    assert again.status_code == 409


def test_cancel_while_running_stops_the_provider(api: Api) -> None:
    created = api.create(generation(["slow"], config={"script": ["slow"], "slow_seconds": 20}))
    api.wait(created["id"], {"EXECUTING"})
    response = api.client.post(f"/api/v1/tasks/{created['id']}/cancel", headers=api.headers())
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    task = api.wait(created["id"], timeout=10)
    assert task["status"] == "CANCELLED"
    assert task["result_image_path"] is None
    assert api.side_effects(created["id"]) == 0


def test_missing_provider_fails_truthfully(api: Api) -> None:
    body = {"task_type": "VIDEO_GENERATION", "prompt": "turn around", "provider_type": "LOCAL"}
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_NOT_AVAILABLE"
    assert "no LOCAL provider is installed for VIDEO_GENERATION" in task["errors"][-1]
    assert task["retry_count"] == 0


def test_higher_priority_runs_first(app_factory: AppFactory) -> None:
    assert_priority_order(app_factory(concurrency=1))


def assert_priority_order(api: Api) -> None:
    """With the only worker slot busy, a high-priority task queued last starts before earlier low ones."""
    blocker = api.create(generation(["slow"], config={"script": ["slow"], "slow_seconds": 60}))
    api.wait(blocker["id"], {"EXECUTING"})
    low = [api.create(generation(["ok"], priority=0))["id"] for _ in range(3)]
    high = api.create(generation(["ok"], priority=8))["id"]
    # the slot frees only now, however slow the machine was in queueing the others
    assert api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers()).status_code == 200
    done = {t: api.wait(t) for t in [*low, high]}
    assert done[high]["started_at"] < min(done[t]["started_at"] for t in low)
    assert [done[t]["started_at"] for t in low] == sorted(done[t]["started_at"] for t in low)  # FIFO within a band


def test_heartbeats_keep_long_runs_alive(app_factory: AppFactory) -> None:
    """Two runs longer than several leases, beaten by the shared heartbeat thread, are never taken over."""
    api = app_factory(
        concurrency=4,  # free threads that would take over an expired lease
        tasks={"lease_seconds": 0.5, "heartbeat_seconds": 0.1, "cancel_poll_seconds": 0.0},
        reaper={"interval_seconds": 0.1, "republish_after_seconds": 0.2},
    )
    blocking = {"script": ["block"], "slow_seconds": 2.0}
    ids = [api.create(generation(["block"], config=blocking))["id"] for _ in range(2)]
    for task_id in ids:
        task = api.wait(task_id, timeout=30)
        assert task["status"] == "COMPLETED", task["errors"]
        assert task["is_resumed"] is False and task["resume_attempt_count"] == 0
        assert api.side_effects(task_id) == 1
