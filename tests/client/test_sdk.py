"""The sync SDK against the real API: resources, pagination, waits (SSE and polling), retries, idempotency."""

from __future__ import annotations

import builtins
import threading
import uuid

import httpx
import pytest

from atelier.client import (
    APIConnectionError,
    APIStatusError,
    AtelierError,
    AuthenticationError,
    Client,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    TaskFailed,
    TimeoutError,
    UnprocessableEntity,
    WaitProgress,
)
from atelier.core.auth import Role, mint_token
from tests.client.conftest import CAPPED, OK, PARKED, PROGRESSING, SLOW, THROTTLED, Live, Recorder
from tests.conftest import Api, data_url, png_bytes
from tests.fakes.server import free_port


def in_process(api: Api, tenant: str = "acme", role: Role = Role.SERVICE) -> Client:
    """A client driving the app in-process through Starlette's TestClient (an httpx.Client)."""
    token = mint_token(api.settings.auth, tenant=tenant, role=role)
    return Client("http://testserver", token, http_client=api.client)


def test_task_lifecycle_in_process(inproc: Api) -> None:
    client = in_process(inproc, tenant="lifecycle")
    task = client.tasks.create("GENERATION", prompt="a linen shirt", priority=3, queue_name=PARKED)
    assert task.status == "PENDING" and task.task_type == "GENERATION" and task.prompt == "a linen shirt"
    assert client.tasks.get(task.id).queue_position == 0
    assert client.tasks.update(task.id, priority=9).priority == 9
    assert [t.id for t in client.tasks.list(status="PENDING", task_type="GENERATION")] == [task.id]
    assert client.tasks.list(status="COMPLETED") == []
    assert client.tasks.cancel(task.id).status == "CANCELLED"
    cleaned = client.tasks.cleanup(task.id)
    assert cleaned.is_deleted and cleaned.task_id == task.id
    assert client.tasks.delete(task.id).id == task.id
    with pytest.raises(NotFound) as caught:
        client.tasks.get(task.id)
    assert caught.value.status_code == 404 and caught.value.code == "not_found"
    assert caught.value.request_id == caught.value.response.request.headers["X-Request-ID"]


def test_errors_map_to_the_exception_tree(inproc: Api) -> None:
    client = in_process(inproc, tenant="errors")
    with pytest.raises(AuthenticationError) as unauthenticated:
        Client("http://testserver", "not-a-jwt", http_client=inproc.client).tasks.list()
    assert unauthenticated.value.status_code == 401
    with pytest.raises(PermissionDenied):
        in_process(inproc, role=Role.VIEWER).tasks.create("GENERATION", prompt="x")
    with pytest.raises(UnprocessableEntity) as invalid:
        client.tasks.create("GENERATION", prompt="")
    assert "prompt" in invalid.value.message and isinstance(invalid.value.body["detail"], list)
    task = client.tasks.create("GENERATION", prompt="x", queue_name=PARKED)
    client.tasks.cancel(task.id)
    with pytest.raises(Conflict) as conflict:
        client.tasks.cancel(task.id)
    assert isinstance(conflict.value, APIStatusError) and isinstance(conflict.value, AtelierError)


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (400, "BadRequest"),
        (410, "Gone"),
        (418, "BadRequest"),
        (500, "InternalServerError"),
        (502, "InternalServerError"),
    ],
)
def test_other_statuses_map_by_code(status: int, name: str) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"detail": "nope", "code": "x"}))
    with Client("http://api.test", "t", transport=transport) as client, pytest.raises(APIStatusError) as caught:
        client.tasks.get(uuid.uuid4())
    assert type(caught.value).__name__ == name and caught.value.message == "nope" and caught.value.code == "x"


def test_pagination_iterates_every_page(live: Live) -> None:
    with live.client() as client:
        created = [client.tasks.create("GENERATION", **OK).id for _ in range(7)]
        seen = list(client.tasks.iter(page_size=3))
        assert [t.id for t in seen] == list(reversed(created))  # newest first, each once
        assert [t.id for t in client.tasks.list_all(page_size=2)] == [t.id for t in seen]
        for i in range(5):
            client.storage.upload(f"pages/{i}.png", png_bytes(), content_type="image/png")
        assert [o.path for o in client.storage.iter("pages/", page_size=2)] == [f"pages/{i}.png" for i in range(5)]
        monitored = {t.id for t in client.monitoring.iter_tasks(page_size=3)}
        assert monitored == set(created)


def test_wait_follows_the_event_stream(live: Live) -> None:
    recorder = Recorder()
    reports: list[WaitProgress] = []
    with live.client(transport=recorder) as client:
        task = client.tasks.create("GENERATION", **PROGRESSING)
        done = client.tasks.wait(task.id, timeout=30, on_progress=reports.append)
    assert done.status == "COMPLETED" and done.result_image_path
    assert recorder.paths("GET").count(f"/api/v1/tasks/{task.id}/events") == 1
    streamed = [r.event for r in reports if r.event is not None]
    assert [e.status for e in streamed if e.event_type == "TASK_STATUS"][-1] == "COMPLETED"
    assert any(r.progress == 50.0 for r in reports)  # the provider's progress, read or streamed
    assert all(e.id is not None for e in streamed if e.event_type != "progress")


def test_wait_falls_back_to_polling_without_a_stream(live: Live) -> None:
    recorder = Recorder()
    recorder.refuse_events = True
    with live.client(transport=recorder) as client:
        task = client.tasks.create("GENERATION", **SLOW)
        done = client.tasks.wait(task.id, timeout=30, poll_interval=0.1)
    assert done.status == "COMPLETED"
    assert recorder.statuses[recorder.paths().index(f"/api/v1/tasks/{task.id}/events")] == 404
    assert recorder.paths("GET").count(f"/api/v1/tasks/{task.id}") >= 3  # polled


def test_wait_times_out_and_can_raise_on_failure(live: Live) -> None:
    with live.client() as client:
        slow = client.tasks.create("GENERATION", prompt="x", config={"script": ["slow"], "slow_seconds": 20})
        with pytest.raises(TimeoutError) as caught:
            client.tasks.wait(slow.id, timeout=0.5)
        assert isinstance(caught.value, builtins.TimeoutError) and isinstance(caught.value, AtelierError)
        with pytest.raises(TimeoutError):
            client.tasks.wait(slow.id, timeout=0.3, use_sse=False)
        client.tasks.cancel(slow.id)
        failing = client.tasks.create("GENERATION", prompt="x", config={"script": ["fatal"]})
        with pytest.raises(TaskFailed) as failed:
            client.tasks.wait(failing.id, timeout=30, raise_on_failure=True)
        assert failed.value.task.status == "FAILED"
        assert client.tasks.wait(slow.id, timeout=30).status == "CANCELLED"


def test_429_is_retried_after_retry_after(live: Live) -> None:
    recorder = Recorder()
    with live.client(CAPPED, transport=recorder) as client:
        first = client.tasks.create("GENERATION", **SLOW)
        second = client.tasks.create("GENERATION", **OK)  # refused (first is active), then retried after 5 s
        assert second.id != first.id
    posts = [(r, s) for r, s in zip(recorder.requests, recorder.statuses, strict=True) if r.method == "POST"]
    assert [s for _, s in posts] == [200, 429, 200]
    assert posts[1][0].headers["Idempotency-Key"] == posts[2][0].headers["Idempotency-Key"]
    assert posts[0][0].headers["Idempotency-Key"] != posts[1][0].headers["Idempotency-Key"]


def test_a_retry_after_beyond_the_bound_is_raised(live: Live) -> None:
    with live.client(THROTTLED, retry=RetryPolicy(max_wait=10)) as client:
        client.tasks.create("GENERATION", **OK)
        with pytest.raises(RateLimited) as caught:
            client.tasks.create("GENERATION", **OK)
    assert caught.value.status_code == 429 and caught.value.retry_after is not None
    assert caught.value.retry_after > 10


def test_idempotency_keys(live: Live) -> None:
    recorder = Recorder()
    with live.client(transport=recorder) as client:
        one = client.tasks.create("GENERATION", idempotency_key="order-1", **OK)
        again = client.tasks.create("GENERATION", idempotency_key="order-1", **OK)
        assert again.id == one.id
        with pytest.raises(UnprocessableEntity):
            client.tasks.create("GENERATION", idempotency_key="order-1", prompt="another")
        client.tasks.create("GENERATION", idempotency_key=False, **OK)
        assert "Idempotency-Key" not in recorder.requests[-1].headers
        assert client.tasks.create("GENERATION", **OK).id != client.tasks.create("GENERATION", **OK).id
        assert len(client.tasks.list_all()) == 4


def test_a_lost_answer_is_retried_with_the_same_key(live: Live) -> None:
    recorder = Recorder()
    with live.client(transport=recorder, retry=RetryPolicy(backoff=0.01)) as client:
        recorder.lose_next_post_answer = True
        task = client.tasks.create("GENERATION", **OK)
        assert [t.id for t in client.tasks.list_all()] == [task.id]  # the retry was a replay, not a second task
    keys = [r.headers["Idempotency-Key"] for r in recorder.requests if r.method == "POST"]
    assert len(keys) == 2 and keys[0] == keys[1]


def test_unkeyed_posts_are_not_repeated_after_a_lost_answer(live: Live) -> None:
    recorder = Recorder()
    with live.client(transport=recorder, auto_idempotency=False, retry=RetryPolicy(backoff=0.01)) as client:
        recorder.lose_next_post_answer = True
        with pytest.raises(APIConnectionError):
            client.tasks.create("GENERATION", **OK)
        assert len(client.tasks.list_all()) == 1
    assert recorder.paths("POST") == ["/api/v1/tasks/"]


def test_no_server_is_a_connection_error() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", "t", retry=RetryPolicy(backoff=0.01)) as client,
        pytest.raises(APIConnectionError),
    ):
        client.tasks.list()


def test_env_configures_the_client(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_URL", live.url + "/")
    monkeypatch.setenv("ATELIER_TOKEN", live.token())
    with Client() as client:
        assert client.config.base_url == live.url
        assert client.tasks.list() == []


def test_image_task_end_to_end_with_storage(live: Live) -> None:
    with live.client() as client:
        task = client.tasks.create("IMAGE_ADJUSTER", input_image=data_url((400, 200)), aspect_ratio="4:5", mode="pad")
        done = client.tasks.wait(task.id, timeout=30, raise_on_failure=True)
        assert done.outputs == [done.result_image_path]
        assert done.result_image_path is not None
        image = client.storage.download(done.result_image_path)
        assert image.startswith(b"\x89PNG")
        assert client.storage.exists(done.result_image_path)
        assert not client.storage.exists("adjustments/none.png")
        client.storage.delete(done.result_image_path)
        assert not client.storage.exists(done.result_image_path)


def test_workflow_resource(live: Live) -> None:
    steps = [
        {"id": "a", "task_type": "GENERATION", "config": {"prompt": "x", "config": {"script": ["ok"]}}},
        {"id": "b", "task_type": "BACKGROUND_REMOVAL", "depends_on": ["a"], "config": {"input_image_paths": ["x"]}},
    ]
    seen: list[str] = []
    with live.client() as client:
        workflow = client.workflows.create(name="wf", origin_instance="test", steps=steps[:1], start=False)
        assert workflow.status == "PENDING" and [s.step_id for s in workflow.steps] == ["a"]
        client.workflows.start(workflow.id)
        done = client.workflows.wait(workflow.id, timeout=30, on_progress=lambda w: seen.append(str(w.status)))
        assert done.status == "COMPLETED" and seen[-1] == "COMPLETED"
        assert [w.id for w in client.workflows.iter(page_size=1)] == [workflow.id]
        assert client.workflows.update(workflow.id, name="renamed").name == "renamed"


def test_monitoring_resource(live: Live) -> None:
    with live.client() as client:
        queues = client.monitoring.queues()
        assert "local" in {q.name for q in queues.queues}
        assert client.monitoring.workers().total_workers >= 1
        assert client.monitoring.workers_health().healthy
        assert client.monitoring.stats().total_tasks == 0  # a fresh tenant


def test_concurrent_waits_share_nothing(live: Live) -> None:
    results: list[str] = []
    with live.client() as client:
        ids = [client.tasks.create("GENERATION", **SLOW).id for _ in range(3)]
        threads = [
            threading.Thread(target=lambda i=i: results.append(str(client.tasks.wait(i, timeout=30).status)))
            for i in ids
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert results == ["COMPLETED"] * 3
