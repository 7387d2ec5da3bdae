"""Idempotency-Key on POST /api/v1/tasks/ and POST /api/v1/workflows/: replay, conflicts, tenants, expiry, races.

These run on apps without a worker: a created task stays PENDING, and every publish is counted at the broker client.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from httpx import Response
from pydantic import TypeAdapter
from sqlalchemy import func, select, update

from atelier.core import idempotency
from atelier.core.auth import Role
from atelier.core.db import session_scope
from atelier.core.idempotency import IdempotencyKey
from atelier.core.time import utcnow
from atelier.engine import reaper
from atelier.tasks.schemas import TaskCreate
from atelier.workflows.models import Workflow
from tests.api.helpers import assert_422, runtime_of, stored_files, task_count
from tests.conftest import Api, AppFactory, data_url

TASKS = "/api/v1/tasks/"
WORKFLOWS = "/api/v1/workflows/"
GEN = {"task_type": "GENERATION", "prompt": "a linen shirt"}
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def post(
    api: Api,
    body: dict[str, Any],
    key: str | bytes | None,
    *,
    url: str = TASKS,
    tenant: str = "acme",
    role: Role = Role.SERVICE,
    params: dict[str, str] | None = None,
) -> Response:
    """POST a create, with ``Idempotency-Key: key`` unless ``key`` is None."""
    headers: dict[str, Any] = api.headers(tenant, role)
    if key is not None:
        headers["Idempotency-Key"] = key
    response: Response = api.client.post(url, json=body, headers=headers, params=params or {})
    return response


def ok(response: Response, *, replayed: bool) -> dict[str, Any]:
    """A 200 that is (or is not) a replay; returns the body."""
    assert response.status_code == 200, response.text
    assert response.headers.get("Idempotent-Replayed") == ("true" if replayed else None)
    body: dict[str, Any] = response.json()
    return body


def count_publishes(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Task ids of every "run task X" message sent to the broker from now on."""
    celery = runtime_of(api).celery
    sent: list[str] = []
    send = celery.send_task

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs["args"][0])
        return send(name, *args, **kwargs)

    monkeypatch.setattr(celery, "send_task", spy)
    return sent


def key_rows(api: Api) -> list[IdempotencyKey]:
    """Every stored key, oldest first."""
    with runtime_of(api).sessions() as session:
        return list(session.scalars(select(IdempotencyKey).order_by(IdempotencyKey.created_at)))


def workflow_count(api: Api) -> int:
    """Rows in the workflows table."""
    with runtime_of(api).sessions() as session:
        return int(session.execute(select(func.count()).select_from(Workflow)).scalar_one())


def expire(api: Api, key: str) -> None:
    """Move the key's expiry into the past, as if the window had passed."""
    with session_scope(runtime_of(api).sessions) as session:
        session.execute(
            update(IdempotencyKey).where(IdempotencyKey.key == key).values(expires_at=utcnow() - timedelta(seconds=1))
        )


def listed_ids(api: Api, tenant: str = "acme") -> list[str]:
    """Ids from the task list endpoint."""
    response = api.client.get(TASKS, headers=api.headers(tenant))
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()]


def workflow_body(**fields: Any) -> dict[str, Any]:
    """A two-step workflow (the root step gets a task when the workflow starts)."""
    return {
        "name": "shoot",
        "origin_instance": "tests",
        "steps": [
            {"id": "gen", "task_type": "GENERATION", "config": {"prompt": "a shirt"}},
            {"id": "more", "task_type": "GENERATION", "config": {"prompt": "another"}, "depends_on": ["gen"]},
        ],
        **fields,
    }


# ---------------------------------------------------------------------------------------------- tasks


def test_replay_answers_the_first_task_as_it_is_now_and_creates_nothing(
    idle_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = count_publishes(idle_api, monkeypatch)
    first = post(idle_api, GEN, "order-1")
    task = ok(first, replayed=False)
    assert sent == [task["id"]]

    again = post(idle_api, GEN, "order-1")
    replay = ok(again, replayed=True)
    assert replay == task
    assert again.headers["location"] == first.headers["location"]
    # the validated body is compared: an explicit default is the same request
    assert ok(post(idle_api, {**GEN, "priority": 0}, "order-1"), replayed=True)["id"] == task["id"]

    cancelled = idle_api.client.post(f"{TASKS}{task['id']}/cancel", headers=idle_api.headers())
    assert cancelled.status_code == 200, cancelled.text
    now = ok(post(idle_api, GEN, "order-1"), replayed=True)
    assert (now["id"], now["status"]) == (task["id"], "CANCELLED")  # re-read, not the first answer's copy

    assert sent == [task["id"]]  # nothing published by the replays
    assert listed_ids(idle_api) == [task["id"]]
    assert task_count(idle_api) == 1
    [row] = key_rows(idle_api)
    assert (row.tenant_id, row.key, row.endpoint, row.resource_type) == (
        "acme",
        "order-1",
        "POST /api/v1/tasks/",
        "task",
    )
    assert (row.resource_id, row.status_code) == (uuid.UUID(task["id"]), 200)
    ttl = timedelta(seconds=idle_api.settings.tasks.idempotency_ttl_seconds)
    assert row.expires_at - row.created_at == ttl == timedelta(days=1)


def test_without_a_key_every_submit_creates(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_publishes(idle_api, monkeypatch)
    a = ok(post(idle_api, GEN, None), replayed=False)
    b = ok(post(idle_api, GEN, None), replayed=False)
    assert a["id"] != b["id"]
    assert sorted(sent) == sorted([a["id"], b["id"]])
    assert task_count(idle_api) == 2
    assert key_rows(idle_api) == []


def test_same_key_with_a_different_request_is_422(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    task = ok(post(idle_api, GEN, "order-2"), replayed=False)
    sent = count_publishes(idle_api, monkeypatch)
    for body in ({**GEN, "prompt": "a wool coat"}, {**GEN, "priority": 5}):
        response = post(idle_api, body, "order-2")
        error = assert_422(response)["detail"][0]
        assert error["loc"] == ["header", "idempotency-key"]
        assert error["msg"] == "Idempotency-Key order-2 was already used with a different request"
    # the same key on the other create endpoint is a different request too
    other = post(idle_api, workflow_body(), "order-2", url=WORKFLOWS)
    assert assert_422(other)["detail"][0]["msg"] == "Idempotency-Key order-2 was already used with a different request"
    assert sent == []
    assert listed_ids(idle_api) == [task["id"]]
    assert workflow_count(idle_api) == 0
    assert ok(post(idle_api, GEN, "order-2"), replayed=True)["id"] == task["id"]  # the key still holds its task


def test_keys_are_per_tenant(idle_api: Api) -> None:
    acme = ok(post(idle_api, GEN, "shared-key"), replayed=False)
    globex = ok(post(idle_api, GEN, "shared-key", tenant="globex"), replayed=False)
    assert acme["id"] != globex["id"]
    assert ok(post(idle_api, GEN, "shared-key", tenant="globex"), replayed=True)["id"] == globex["id"]
    assert ok(post(idle_api, GEN, "shared-key"), replayed=True)["id"] == acme["id"]
    # another tenant's different request under the same key is not a conflict either
    initech = ok(post(idle_api, {**GEN, "prompt": "other"}, "shared-key", tenant="initech"), replayed=False)
    assert listed_ids(idle_api) == [acme["id"]]
    assert listed_ids(idle_api, "globex") == [globex["id"]]
    assert listed_ids(idle_api, "initech") == [initech["id"]]


def test_keys_differ_by_case(idle_api: Api) -> None:
    lower = ok(post(idle_api, GEN, "abc"), replayed=False)
    upper = ok(post(idle_api, GEN, "ABC"), replayed=False)
    assert lower["id"] != upper["id"]


def test_an_expired_key_creates_a_new_task(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    api = app_factory(worker=False, reaper={"enabled": False})
    first = ok(post(api, GEN, "order-3"), replayed=False)
    expire(api, "order-3")
    sent = count_publishes(api, monkeypatch)
    # once expired, even a different request may use the key
    second = ok(post(api, {**GEN, "prompt": "new"}, "order-3"), replayed=False)
    assert second["id"] != first["id"]
    assert sent == [second["id"]]
    assert sorted(listed_ids(api)) == sorted([first["id"], second["id"]])
    [row] = key_rows(api)  # the expired use was replaced
    assert row.resource_id == uuid.UUID(second["id"])
    assert row.expires_at > utcnow()
    assert ok(post(api, {**GEN, "prompt": "new"}, "order-3"), replayed=True)["id"] == second["id"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "k" * 256,
        "tab\there",
        "line\x7f",
        "clé".encode(),  # arrives as latin-1: not ASCII
    ],
    ids=["empty", "too-long", "control", "delete", "non-ascii"],
)
def test_malformed_keys_are_422(idle_api: Api, key: str | bytes) -> None:
    for url, body in ((TASKS, GEN), (WORKFLOWS, workflow_body())):
        response = post(idle_api, body, key, url=url)
        error = assert_422(response)["detail"][0]
        assert error["loc"] == ["header", "idempotency-key"]
        assert "1–255 printable ASCII characters" in error["msg"]
    assert task_count(idle_api) == 0 and workflow_count(idle_api) == 0 and key_rows(idle_api) == []


def test_the_longest_and_odd_printable_keys_are_accepted(idle_api: Api) -> None:
    for key in ("k" * 255, "a b/c:d=e~!", "x"):
        task = ok(post(idle_api, GEN, key), replayed=False)
        assert ok(post(idle_api, GEN, key), replayed=True)["id"] == task["id"]
    assert task_count(idle_api) == 3


def test_viewer_is_refused_before_the_key_is_looked_at(idle_api: Api) -> None:
    ok(post(idle_api, GEN, "order-4"), replayed=False)
    response = post(idle_api, GEN, "order-4", role=Role.VIEWER)
    assert response.status_code == 403, response.text
    assert response.headers.get("Idempotent-Replayed") is None


def test_invalid_input_with_a_key_leaves_the_key_free(idle_api: Api) -> None:
    bad = {"task_type": "IMAGE_ADJUSTER", "input_image": "data:image/png;base64,bm90IGFuIGltYWdl", "aspect_ratio": 1}
    response = post(idle_api, bad, "order-5")
    assert response.status_code == 422, response.text
    assert key_rows(idle_api) == [] and task_count(idle_api) == 0
    fixed = {**bad, "input_image": data_url()}
    assert ok(post(idle_api, fixed, "order-5"), replayed=False)["task_type"] == "IMAGE_ADJUSTER"


def test_replay_after_a_hard_delete_is_409_until_the_key_expires(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, reaper={"enabled": False})
    task = ok(post(api, GEN, "order-6"), replayed=False)
    deleted = api.client.delete(f"{TASKS}{task['id']}", headers=api.headers())
    assert deleted.status_code == 200, deleted.text
    response = post(api, GEN, "order-6")
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    assert response.json()["detail"].startswith(f"Idempotency-Key order-6 was used for task {task['id']}")
    assert "no longer exists" in response.json()["detail"]
    assert task_count(api) == 0
    expire(api, "order-6")
    fresh = ok(post(api, GEN, "order-6"), replayed=False)
    assert fresh["id"] != task["id"] and task_count(api) == 1


def test_a_submit_refused_by_the_broker_frees_its_key(app_factory: AppFactory) -> None:
    api = app_factory(
        worker=False, broker={"url": DEAD_REDIS, "publish_timeout_seconds": 0.2}, reaper={"enabled": False}
    )
    for _ in range(2):  # the retry with the same key is refused again, not answered as a replay (or a 409)
        response = post(api, GEN, "order-7")
        assert response.status_code == 503, response.text
        assert response.headers.get("Idempotent-Replayed") is None
        assert task_count(api) == 0 and key_rows(api) == []


# ---------------------------------------------------------------------------------------------- races


def test_concurrent_submits_with_one_key_create_one_task(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both requests find the key free (a barrier holds them there), then both try to create: one does."""
    sent = count_publishes(idle_api, monkeypatch)
    barrier = threading.Barrier(2, timeout=10)
    lookups = itertools.count()
    find = idempotency._find

    def racing_find(*args: Any) -> Any:
        row = find(*args)
        if next(lookups) < 2:  # the two first lookups; the loser's re-read after the conflict does not wait
            assert row is None
            barrier.wait()
        return row

    monkeypatch.setattr(idempotency, "_find", racing_find)
    body = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": 1}  # stores an inline input
    responses: list[Response] = []

    def submit() -> None:
        responses.append(post(idle_api, body, "race-1"))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert next(lookups) == 3  # two lookups and the loser's re-read after its conflict

    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "no") for r in responses) == ["no", "true"]
    [task_id] = ids
    assert task_count(idle_api) == 1
    assert sent == [task_id]  # the loser published nothing
    files = stored_files(idle_api)
    assert files and all(f"/{task_id}/" in path for path in files), files  # and stored nothing
    assert [row.resource_id for row in key_rows(idle_api)] == [uuid.UUID(task_id)]


@pytest.mark.parametrize("same_request", [True, False])
def test_a_key_committed_between_lookup_and_insert_wins(
    idle_api: Api, monkeypatch: pytest.MonkeyPatch, same_request: bool
) -> None:
    """Another request commits the key right after this one looked: this one answers (or refuses) with the winner."""
    winner = ok(post(idle_api, GEN, None), replayed=False)
    sent = count_publishes(idle_api, monkeypatch)
    fingerprint = idempotency.request_hash(TypeAdapter(TaskCreate).validate_python(GEN))
    find = idempotency._find

    def find_then_lose(*args: Any) -> Any:
        row = find(*args)
        if row is None:
            now = utcnow()
            with session_scope(runtime_of(idle_api).sessions) as session:
                session.add(
                    IdempotencyKey(
                        tenant_id="acme",
                        key="race-2",
                        endpoint="POST /api/v1/tasks/",
                        request_hash=fingerprint if same_request else "0" * 64,
                        resource_type="task",
                        resource_id=uuid.UUID(winner["id"]),
                        status_code=200,
                        created_at=now,
                        expires_at=now + timedelta(hours=1),
                    )
                )
        return row

    monkeypatch.setattr(idempotency, "_find", find_then_lose)
    response = post(idle_api, GEN, "race-2")
    if same_request:
        assert ok(response, replayed=True)["id"] == winner["id"]
    else:
        assert assert_422(response, "header", "idempotency-key")["detail"][0]["msg"] == (
            "Idempotency-Key race-2 was already used with a different request"
        )
    assert sent == []
    assert task_count(idle_api) == 1


# ---------------------------------------------------------------------------------------------- workflows


def test_workflow_replay_answers_the_first_workflow(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_publishes(idle_api, monkeypatch)
    first = ok(post(idle_api, workflow_body(), "wf-1", url=WORKFLOWS), replayed=False)
    assert first["status"] == "RUNNING"
    root_task = first["steps"][0]["task_id"]
    assert sent == [root_task]

    replay = ok(post(idle_api, workflow_body(), "wf-1", url=WORKFLOWS), replayed=True)
    assert replay == first
    cancelled = idle_api.client.delete(f"{WORKFLOWS}{first['id']}", headers=idle_api.headers())
    assert cancelled.status_code == 200, cancelled.text
    now = ok(post(idle_api, workflow_body(), "wf-1", url=WORKFLOWS), replayed=True)
    assert (now["id"], now["status"]) == (first["id"], "CANCELLED")

    assert sent == [root_task]
    assert workflow_count(idle_api) == 1 and task_count(idle_api) == 1
    [row] = key_rows(idle_api)
    assert (row.endpoint, row.resource_type, row.resource_id) == (
        "POST /api/v1/workflows/",
        "workflow",
        uuid.UUID(first["id"]),
    )


def test_workflow_start_flag_is_part_of_the_request(idle_api: Api) -> None:
    paused = {"start": "false"}
    first = ok(post(idle_api, workflow_body(), "wf-2", url=WORKFLOWS, params=paused), replayed=False)
    assert first["status"] == "PENDING"
    assert ok(post(idle_api, workflow_body(), "wf-2", url=WORKFLOWS, params=paused), replayed=True)["id"] == first["id"]
    started = post(idle_api, workflow_body(), "wf-2", url=WORKFLOWS)  # start=true (the default)
    error = assert_422(started)["detail"][0]
    assert error["loc"] == ["header", "idempotency-key"]
    assert error["msg"] == "Idempotency-Key wf-2 was already used with a different request"
    changed = post(idle_api, workflow_body(name="other"), "wf-2", url=WORKFLOWS, params=paused)
    assert changed.status_code == 422, changed.text
    assert workflow_count(idle_api) == 1 and task_count(idle_api) == 0
    # an explicit start=false is the same request as the first one
    explicit = post(idle_api, workflow_body(), "wf-2", url=WORKFLOWS, params={"start": "0"})
    assert ok(explicit, replayed=True)["status"] == "PENDING"


def test_workflow_keys_per_tenant_and_expiry(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, reaper={"enabled": False})
    acme = ok(post(api, workflow_body(), "wf-3", url=WORKFLOWS, params={"start": "false"}), replayed=False)
    globex = ok(post(api, workflow_body(), "wf-3", url=WORKFLOWS, tenant="globex"), replayed=False)
    assert acme["id"] != globex["id"]
    expire(api, "wf-3")
    again = ok(post(api, workflow_body(), "wf-3", url=WORKFLOWS, params={"start": "false"}), replayed=False)
    assert again["id"] not in {acme["id"], globex["id"]}
    assert workflow_count(api) == 3


def test_concurrent_workflow_submits_create_one_workflow(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = count_publishes(idle_api, monkeypatch)
    barrier = threading.Barrier(2, timeout=10)
    lookups = itertools.count()
    find = idempotency._find

    def racing_find(*args: Any) -> Any:
        row = find(*args)
        if next(lookups) < 2:
            barrier.wait()
        return row

    monkeypatch.setattr(idempotency, "_find", racing_find)
    responses: list[Response] = []
    threads = [
        threading.Thread(target=lambda: responses.append(post(idle_api, workflow_body(), "wf-race", url=WORKFLOWS)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sorted(r.headers.get("Idempotent-Replayed", "no") for r in responses) == ["no", "true"]
    assert workflow_count(idle_api) == 1 and task_count(idle_api) == 1
    assert len(sent) == 1


# ---------------------------------------------------------------------------------------------- docs, reaper


def test_openapi_documents_the_header_on_both_creates(idle_api: Api) -> None:
    paths = idle_api.client.get("/openapi.json").json()["paths"]
    for path in (TASKS, WORKFLOWS):
        params = {p["name"]: p for p in paths[path]["post"]["parameters"] if p["in"] == "header"}
        header = params["Idempotency-Key"]
        assert header["required"] is False
        assert "Idempotent-Replayed" in header["description"]
        assert (header["schema"]["minLength"], header["schema"]["maxLength"]) == (1, 255)


def test_reaper_deletes_expired_keys_only_in_bounded_batches(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = app_factory(worker=False, reaper={"enabled": False})
    for key, tenant in (("old-1", "acme"), ("old-2", "globex"), ("live", "acme")):
        ok(post(api, GEN, key, tenant=tenant), replayed=False)
    expire(api, "old-1")
    expire(api, "old-2")
    runtime = runtime_of(api)
    monkeypatch.setattr(reaper, "BATCH", 1)
    assert reaper.sweep(runtime).expired_keys == 1
    assert len(key_rows(api)) == 2
    assert reaper.sweep(runtime).expired_keys == 1
    assert [(row.key, row.tenant_id) for row in key_rows(api)] == [("live", "acme")]
    assert reaper.sweep(runtime).expired_keys == 0
    assert [row.key for row in key_rows(api)] == ["live"]
    assert task_count(api) == 3  # the keys go, their tasks stay
    assert ok(post(api, GEN, "live"), replayed=True)
