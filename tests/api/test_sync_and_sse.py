"""Sync mode on create (``Prefer: wait=N``) and the task event stream (``GET /api/v1/tasks/{id}/events``, SSE).

Nothing here measures time: a create that did not wait is recognised by its body (the snapshot taken right after the
commit says PENDING even though the worker finishes the task within milliseconds), a create that waited by the
finished task it answers and its ``Preference-Applied`` value.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from httpx import Response

from atelier.core.auth import Role
from atelier.tasks import events_stream
from tests.api.helpers import task_count
from tests.conftest import Api, AppFactory, data_url

TASKS = "/api/v1/tasks/"
ADJUST = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": "4:5", "mode": "pad"}
APPLIED = "Preference-Applied"
SSE_SETTINGS = {"sse_max_seconds": 20}  # a stream that fails to end stops with `event: timeout`, not a hung test


def generation(script: list[str], **config: Any) -> dict[str, Any]:
    """A task of the scripted GENERATION provider."""
    return {"task_type": "GENERATION", "prompt": "a linen shirt", "config": {"script": script, **config}}


def post(
    api: Api, body: dict[str, Any], prefer: str | list[str] | None = None, key: str | None = None
) -> tuple[Response, dict[str, Any]]:
    """POST a create with the given ``Prefer`` header(s) and ``Idempotency-Key``; asserts a 200."""
    headers: list[tuple[str, str]] = list(api.headers().items())
    for value in [prefer] if isinstance(prefer, str) else prefer or []:
        headers.append(("Prefer", value))
    if key is not None:
        headers.append(("Idempotency-Key", key))
    response = api.client.post(TASKS, json=body, headers=headers)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    uuid.UUID(task["id"])  # the id is always there
    assert task["request_id"] == task["id"]
    assert response.headers["Location"] == task["status_url"]
    return response, task


# ------------------------------------------------------------------------------------------------- Prefer: wait=N


def test_wait_answers_the_completed_task(api: Api) -> None:
    response, task = post(api, ADJUST, prefer="wait=30")
    assert task["status"] == "COMPLETED"
    assert task["result_image_path"]
    assert task["progress"] == 100.0
    assert response.headers[APPLIED] == "wait=30"
    assert api.get(task["id"])["status"] == "COMPLETED"


def test_short_wait_answers_the_running_task_which_then_completes(api: Api) -> None:
    # A first task warms the embedded worker's path (first claim, first provider call), and the wait leaves the
    # slow task 3 s to be claimed: once, on a loaded CI machine, it was still PENDING after a 1 s wait.
    assert post(api, ADJUST, prefer="wait=30")[1]["status"] == "COMPLETED"
    response, task = post(api, generation(["slow"], slow_seconds=6), prefer="wait=3")
    assert task["status"] == "EXECUTING"  # read again after the wait: the snapshot at creation said PENDING
    assert APPLIED not in response.headers
    assert api.wait(task["id"])["status"] == "COMPLETED"


def test_wait_answers_a_failed_task(api: Api) -> None:
    response, task = post(api, generation(["fatal"]), prefer="wait=30")
    assert task["status"] == "FAILED"
    assert task["errors"]
    assert response.headers[APPLIED] == "wait=30"


def test_wait_is_capped_by_the_setting(app_factory: AppFactory) -> None:
    api = app_factory(server={"max_sync_wait_seconds": 5})
    response, task = post(api, ADJUST, prefer="wait=30")
    assert task["status"] == "COMPLETED"
    assert response.headers[APPLIED] == "wait=5"


def test_capped_wait_gives_up_before_a_long_task_finishes(app_factory: AppFactory) -> None:
    api = app_factory(server={"max_sync_wait_seconds": 1})
    # Waiting the requested 30 s would outlast the 20 s task and answer it COMPLETED.
    response, task = post(api, generation(["slow"], slow_seconds=20), prefer="wait=30")
    assert task["status"] in {"PENDING", "EXECUTING"}
    assert APPLIED not in response.headers
    cancelled = api.client.post(f"{TASKS}{task['id']}/cancel", headers=api.headers())
    assert cancelled.status_code == 200, cancelled.text
    assert api.wait(task["id"])["status"] == "CANCELLED"


def test_zero_disables_sync_mode(app_factory: AppFactory) -> None:
    api = app_factory(server={"max_sync_wait_seconds": 0})
    response, task = post(api, ADJUST, prefer="wait=30")
    assert task["status"] == "PENDING"
    assert APPLIED not in response.headers
    assert api.wait(task["id"])["status"] == "COMPLETED"


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=abc",
        "wait=1.5",
        "wait=-2",
        "wait=0",
        "wait",
        "wait=",
        'wait="soon"',
        "respond-async",
        "wait=abc, wait=30",  # only the first instance of a preference counts
    ],
)
def test_malformed_or_other_preferences_are_ignored(api: Api, prefer: str) -> None:
    response, task = post(api, ADJUST, prefer=prefer)
    assert task["status"] == "PENDING"
    assert APPLIED not in response.headers


@pytest.mark.parametrize(
    "prefer",
    [
        "respond-async, wait=30",
        "WAIT = 30",
        'wait="30"',
        'handling=lenient; note="a, b, wait=1", wait=30',
        "wait=30; unit=seconds",
        ["respond-async", "wait=30"],  # several Prefer headers are one list
    ],
)
def test_wait_among_other_preferences(api: Api, prefer: str | list[str]) -> None:
    response, task = post(api, ADJUST, prefer=prefer)
    assert task["status"] == "COMPLETED"
    assert response.headers[APPLIED] == "wait=30"


def test_idempotent_replay_honours_the_wait(api: Api) -> None:
    body = generation(["slow"], slow_seconds=1)  # still running when the replay arrives: the replay has to wait
    first, created = post(api, body, key="order-1")
    assert created["status"] == "PENDING"
    assert "Idempotent-Replayed" not in first.headers
    replay, task = post(api, body, prefer="wait=30", key="order-1")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers[APPLIED] == "wait=30"
    assert task["id"] == created["id"]
    assert task["status"] == "COMPLETED"
    assert task_count(api) == 1
    again, same = post(api, body, prefer="wait=5", key="order-1")  # already finished: answered at once
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers[APPLIED] == "wait=5"
    assert same["id"] == created["id"]


def test_bria_sync_true_waits_up_to_the_cap(app_factory: AppFactory) -> None:
    api = app_factory(server={"max_sync_wait_seconds": 30})
    response = api.client.post(f"{TASKS}?sync=true", json=ADJUST, headers=api.headers())
    assert response.status_code == 200 and response.json()["status"] == "COMPLETED"
    assert response.headers[APPLIED] == "wait=30"
    slow = api.client.post(
        f"{TASKS}?sync=true",
        json=generation(["slow"], slow_seconds=20),
        headers=[*api.headers().items(), ("Prefer", "wait=1")],
    )  # an explicit Prefer: wait wins over sync=true
    assert slow.status_code == 200 and slow.json()["status"] in {"PENDING", "EXECUTING"} and APPLIED not in slow.headers
    assert slow.json()["status_url"].endswith(slow.json()["id"])  # the id is never lost
    api.client.post(f"{TASKS}{slow.json()['id']}/cancel", headers=api.headers())
    plain = api.client.post(TASKS, json=ADJUST, headers=api.headers())
    assert plain.json()["status"] == "PENDING" and APPLIED not in plain.headers  # async by default


def test_workflow_create_waits_for_the_workflow(api: Api) -> None:
    config = {"prompt": "a linen shirt", "config": {"script": ["ok"]}}
    steps = [
        {"id": "a", "task_type": "GENERATION", "config": config},
        {"id": "b", "task_type": "GENERATION", "config": config, "depends_on": ["a"]},
    ]
    body = {"name": "wait", "origin_instance": "tests", "steps": steps}
    response = api.client.post("/api/v1/workflows/", json=body, headers=[*api.headers().items(), ("Prefer", "wait=30")])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "COMPLETED" and response.headers[APPLIED] == "wait=30"
    assert all(step["status"] == "COMPLETED" for step in response.json()["steps"])
    unstarted = api.client.post("/api/v1/workflows/?start=false&sync=true", json=body, headers=api.headers())
    assert unstarted.json()["status"] == "PENDING" and APPLIED not in unstarted.headers  # nothing to wait for


def test_applied_wait_parsing() -> None:
    assert events_stream.applied_wait(["wait=10"], 60) == 10
    assert events_stream.applied_wait(["wait=100"], 60) == 60
    assert events_stream.applied_wait(["wait=10"], 0) is None
    assert events_stream.applied_wait(["wait=" + "9" * 5000], 60) == 60
    assert events_stream.applied_wait([], 60) is None
    assert events_stream.applied_wait(['a="x\\", wait=3"', "wait=4"], 60) == 4  # an escaped quote stays quoted


# ------------------------------------------------------------------------------------------------- SSE


@dataclass
class Frame:
    """One parsed server-sent event."""

    id: int | None
    event: str
    data: dict[str, Any]


def parse(text: str) -> tuple[list[Frame], list[str]]:
    """Frames and comment lines of an SSE body (asserting the framing)."""
    assert text.endswith("\n\n"), text[-200:]
    frames: list[Frame] = []
    comments: list[str] = []
    for block in text[:-2].split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
                continue
            name, separator, value = line.partition(": ")
            assert separator and name in {"id", "event", "data"} and name not in fields, block
            fields[name] = value
        if fields:
            frames.append(
                Frame(int(fields["id"]) if "id" in fields else None, fields["event"], json.loads(fields["data"]))
            )
    return frames, comments


def stream(api: Api, task_id: str, tenant: str = "acme", last_event_id: str | None = None) -> tuple[Response, str]:
    """Read an event stream to its end."""
    headers = api.headers(tenant)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with api.client.stream("GET", f"{TASKS}{task_id}/events", headers=headers) as response:
        body = "".join(response.iter_text())
    return response, body


def events(api: Api, task_id: str, last_event_id: str | None = None) -> list[Frame]:
    """The frames of a 200 event stream."""
    response, body = stream(api, task_id, last_event_id=last_event_id)
    assert response.status_code == 200, body
    assert response.headers["content-type"].startswith("text/event-stream")
    frames, _ = parse(body)
    return frames


def rows(frames: list[Frame]) -> list[tuple[str, str | None]]:
    """(event_type, status) of the frames that are event rows."""
    return [(f.event, f.data["status"]) for f in frames if f.id is not None]


def test_stream_follows_a_task_to_completion(app_factory: AppFactory) -> None:
    api = app_factory(server=SSE_SETTINGS)
    task = api.create(generation(["slow"], slow_seconds=1.5))
    frames = events(api, task["id"])
    assert rows(frames) == [
        ("TASK_CREATED", "PENDING"),
        ("TASK_STATUS", "EXECUTING"),
        ("TASK_STATUS", "COMPLETED"),
    ]
    ids = [f.id for f in frames if f.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert frames[-1].event == "TASK_STATUS" and frames[-1].data["status"] == "COMPLETED"  # ended right after it
    for frame in frames:
        assert frame.data["task_id"] == task["id"]
        assert frame.data["event_type"] == frame.event
        assert {"event_type", "task_id", "status", "message", "data", "created_at"} <= frame.data.keys()
    created = frames[0]
    assert created.data["data"] == {"task_type": "GENERATION"}
    assert "progress" not in created.data  # only status and progress frames carry it
    executing = next(f for f in frames if f.data["status"] == "EXECUTING" and f.id is not None)
    assert executing.data["data"]["to"] == "EXECUTING"
    # The provider reports 50 % while it runs: as a progress frame, or already on the EXECUTING frame.
    progress = [f for f in frames if f.event == "progress"]
    assert all(f.id is None and f.data["status"] == "EXECUTING" for f in progress)
    assert executing.data["progress"] == 50.0 or [f.data["progress"] for f in progress] == [50.0]
    assert frames[-1].data["progress"] == 100.0
    assert api.get(task["id"])["status"] == "COMPLETED"


def test_stream_of_a_finished_task_replays_and_ends(app_factory: AppFactory) -> None:
    api = app_factory(server=SSE_SETTINGS)
    task = api.wait(api.create(generation(["fatal"]))["id"])
    assert task["status"] == "FAILED"
    frames = events(api, task["id"])
    assert rows(frames) == [("TASK_CREATED", "PENDING"), ("TASK_STATUS", "EXECUTING"), ("TASK_STATUS", "FAILED")]
    assert frames[-1].data["message"] == task["errors"][-1]
    assert [f.event for f in frames].count("progress") == 0


def test_last_event_id_resumes_after_it(app_factory: AppFactory) -> None:
    api = app_factory(server=SSE_SETTINGS)
    task_id = api.wait(api.create(ADJUST)["id"])["id"]
    full = events(api, task_id)
    assert len(full) == 3
    assert events(api, task_id, last_event_id=str(full[0].id)) == full[1:]
    assert events(api, task_id, last_event_id=str(full[1].id)) == full[2:]
    assert events(api, task_id, last_event_id="not-an-id") == full  # ignored: from the start
    response, body = stream(api, task_id, last_event_id=str(full[-1].id))  # nothing left: EventSource stops on 204
    assert response.status_code == 204
    assert body == ""


def test_stream_continues_past_a_terminal_event_that_was_not_the_last(app_factory: AppFactory) -> None:
    api = app_factory(server=SSE_SETTINGS)
    task_id = api.wait(api.create(generation(["fatal"]))["id"])["id"]
    rerun = api.client.put(f"{TASKS}{task_id}", json={"status": "PENDING"}, headers=api.headers())
    assert rerun.status_code == 200, rerun.text
    assert api.wait(task_id)["status"] == "FAILED"
    frames = events(api, task_id)
    assert [status for _, status in rows(frames)] == [
        "PENDING",
        "EXECUTING",
        "FAILED",
        "PENDING",
        "EXECUTING",
        "FAILED",
    ]
    first_failure = next(f for f in frames if f.data["status"] == "FAILED")
    assert events(api, task_id, last_event_id=str(first_failure.id)) == frames[3:]


def test_stream_of_a_waiting_task_sends_heartbeats_and_times_out(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream, "HEARTBEAT_SECONDS", 0.1)
    api = app_factory(worker=False, server={"sse_max_seconds": 0.8})
    task_id = api.create(ADJUST)["id"]
    response, body = stream(api, task_id)
    assert response.status_code == 200
    frames, comments = parse(body)
    assert rows(frames) == [("TASK_CREATED", "PENDING")]
    assert comments and set(comments) == {": keep-alive"}
    timeout = frames[-1]
    assert timeout.event == "timeout" and timeout.id is None
    assert timeout.data["status"] == "PENDING"
    assert timeout.data["data"] == {"last_event_id": frames[0].id}


def test_stream_is_tenant_scoped(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, server={"sse_max_seconds": 0.2})
    task_id = api.create(ADJUST)["id"]
    other, body = stream(api, task_id, tenant="globex")
    assert other.status_code == 404, body
    assert json.loads(body)["code"] == "not_found"
    unknown, body = stream(api, str(uuid.uuid4()))
    assert unknown.status_code == 404, body
    anonymous = api.client.get(f"{TASKS}{task_id}/events")
    assert anonymous.status_code == 401
    viewer = api.client.get(f"{TASKS}{task_id}/events", headers=api.headers(role=Role.VIEWER))
    assert viewer.status_code == 200
    assert rows(parse(viewer.text)[0]) == [("TASK_CREATED", "PENDING")]


def test_openapi_documents_both_features(idle_api: Api) -> None:
    spec = idle_api.client.get("/openapi.json").json()
    create = spec["paths"][TASKS]["post"]
    prefer = next(p for p in create["parameters"] if p["name"] == "Prefer")
    assert prefer["in"] == "header" and "wait=N" in prefer["description"]
    stream_op = spec["paths"]["/api/v1/tasks/{task_id}/events"]["get"]
    assert "text/event-stream" in stream_op["responses"]["200"]["content"]
    assert any(p["name"] == "Last-Event-ID" for p in stream_op["parameters"])
