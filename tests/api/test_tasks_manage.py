"""List, get, update, cancel, delete and cleanup; generation endpoints; tenants and roles."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import update

from atelier.core.auth import Role
from atelier.core.db import session_scope
from atelier.tasks.models import Task
from tests.api.helpers import assert_422, runtime_of, stored_files, task_count
from tests.conftest import Api, data_url

ADJUST = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": 1}


def gen(**extra: Any) -> dict[str, Any]:
    """A generation task body."""
    return {"task_type": "GENERATION", "prompt": "p", **extra}


def test_list_filters_and_pagination(idle_api: Api) -> None:
    a = idle_api.create(gen(origin_instance="shop-1", origin_zone="eu", origin_tenant_id="org-1"))
    b = idle_api.create(gen(origin_instance="shop-2", origin_zone="us"))
    c = idle_api.create({**ADJUST, "origin_instance": "shop-1"})
    h = idle_api.headers()
    listed = idle_api.client.get("/api/v1/tasks/", headers=h).json()
    assert [t["id"] for t in listed] == [c["id"], b["id"], a["id"]]  # newest first
    q = "/api/v1/tasks/?"
    assert [t["id"] for t in idle_api.client.get(q + "origin_instance=shop-1", headers=h).json()] == [
        c["id"],
        a["id"],
    ]
    assert [t["id"] for t in idle_api.client.get(q + "task_type=IMAGE_ADJUSTER", headers=h).json()] == [c["id"]]
    assert [t["id"] for t in idle_api.client.get(q + "origin_zone=us", headers=h).json()] == [b["id"]]
    assert [t["id"] for t in idle_api.client.get(q + "origin_tenant_id=org-1", headers=h).json()] == [a["id"]]
    assert [t["id"] for t in idle_api.client.get(q + "limit=1&skip=1", headers=h).json()] == [b["id"]]
    assert idle_api.client.get(q + "status=COMPLETED", headers=h).json() == []
    assert len(idle_api.client.get(q + "status=PENDING", headers=h).json()) == 3
    assert_422(idle_api.client.get(q + "status=DONE", headers=h), "status")
    assert_422(idle_api.client.get(q + "limit=0", headers=h), "limit")
    assert_422(idle_api.client.get(q + "skip=-1", headers=h), "skip")


def test_get_unknown_and_malformed_ids(idle_api: Api) -> None:
    missing = idle_api.client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=idle_api.headers())
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert_422(idle_api.client.get("/api/v1/tasks/not-a-uuid", headers=idle_api.headers()), "task_id")


def test_update_fields_priority_and_status(idle_api: Api) -> None:
    task = idle_api.create(gen())
    url, h = f"/api/v1/tasks/{task['id']}", idle_api.headers()
    updated = idle_api.client.put(url, json={"priority": 9, "executor_type": "external", "errors": ["note"]}, headers=h)
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert (body["priority"], body["executor_type"], body["errors"]) == (9, "external", ["note"])
    assert body["celery_task_id"] != task["celery_task_id"]  # re-published with the new priority
    assert idle_api.client.put(url, json={"status": "COMPLETED"}, headers=h).status_code == 409
    cancelled = idle_api.client.put(url, json={"status": "CANCELLED"}, headers=h).json()
    assert cancelled["status"] == "CANCELLED" and cancelled["completed_at"]
    assert idle_api.client.put(url, json={"priority": 1}, headers=h).status_code == 409  # not PENDING any more
    requeued = idle_api.client.put(url, json={"status": "PENDING"}, headers=h).json()
    assert requeued["status"] == "PENDING" and requeued["completed_at"] is None


def test_update_refuses_fields_of_other_types_and_managed_fields(idle_api: Api) -> None:
    task = idle_api.create(ADJUST)
    url, h = f"/api/v1/tasks/{task['id']}", idle_api.headers()
    assert_422(idle_api.client.put(url, json={"fal_app_id": "x"}, headers=h), "fal_app_id")
    assert_422(idle_api.client.put(url, json={"priority": "high"}, headers=h))
    gen_task = idle_api.create(gen())
    gen_url = f"/api/v1/tasks/generation/{gen_task['id']}"
    assert_422(idle_api.client.put(gen_url, json={"created_at": "2020-01-01T00:00:00Z"}, headers=h), "created_at")
    ok = idle_api.client.put(gen_url, json={"result_image_path": "x.png", "progress": 42.5}, headers=h).json()
    assert (ok["result_image_path"], ok["progress"]) == ("x.png", 42.5)


def test_generation_endpoints_and_route_order(idle_api: Api) -> None:
    g = idle_api.create(gen(fal_app_id="fal-ai/flux"))
    idle_api.create(ADJUST)
    h = idle_api.headers()
    listed = idle_api.client.get("/api/v1/tasks/generation", headers=h)
    assert listed.status_code == 200 and [t["id"] for t in listed.json()] == [g["id"]]
    got = idle_api.client.get(f"/api/v1/tasks/generation/{g['id']}", headers=h).json()
    assert got["fal_app_id"] == "fal-ai/flux" and "fal_request_id" in got
    other = idle_api.client.get("/api/v1/tasks/", headers=h).json()[0]
    assert idle_api.client.get(f"/api/v1/tasks/generation/{other['id']}", headers=h).status_code == 404
    assert idle_api.client.post(f"/api/v1/tasks/generation/{g['id']}/cancel", headers=h).json()["status"] == "CANCELLED"


def test_generation_list_filters_by_workflow(idle_api: Api) -> None:
    inside, outside = idle_api.create(gen()), idle_api.create(gen())
    with session_scope(runtime_of(idle_api).sessions) as session:  # workflows set this column when they plan steps
        session.execute(update(Task).where(Task.id == uuid.UUID(inside["id"])).values(workflow_id="wf-1"))
    h = idle_api.headers()
    listed = idle_api.client.get("/api/v1/tasks/generation?workflow_id=wf-1", headers=h).json()
    assert [t["id"] for t in listed] == [inside["id"]]
    assert listed[0]["workflow_id"] == "wf-1"
    assert outside["id"] in {t["id"] for t in idle_api.client.get("/api/v1/tasks/generation", headers=h).json()}


def test_delete_removes_row_and_files(idle_api: Api) -> None:
    task = idle_api.create(ADJUST)
    assert any(task["id"] in f for f in stored_files(idle_api))
    response = idle_api.client.delete(f"/api/v1/tasks/{task['id']}", headers=idle_api.headers())
    assert response.status_code == 200 and response.json()["id"] == task["id"]
    assert task_count(idle_api) == 0
    assert not any(task["id"] in f for f in stored_files(idle_api))
    assert idle_api.client.delete(f"/api/v1/tasks/{task['id']}", headers=idle_api.headers()).status_code == 404


def test_cleanup_keeps_row_and_removes_files(idle_api: Api) -> None:
    task = idle_api.create(ADJUST)
    response = idle_api.client.post(f"/api/v1/tasks/{task['id']}/cleanup", headers=idle_api.headers())
    assert response.status_code == 200
    body = response.json()
    assert body["is_deleted"] is True and body["deleted_at"]
    assert body["deleted_paths"] == [task["input_image_path"]]
    kept = idle_api.get(task["id"])
    assert kept["is_deleted"] is True and kept["status"] == "CANCELLED"
    assert stored_files(idle_api) == []


def test_delete_of_running_task_is_refused(api: Api) -> None:
    task = api.create(gen(config={"script": ["slow"], "slow_seconds": 5}))
    api.wait(task["id"], {"EXECUTING"})
    assert api.client.delete(f"/api/v1/tasks/{task['id']}", headers=api.headers()).status_code == 409
    api.client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=api.headers())
    assert api.wait(task["id"])["status"] == "CANCELLED"
    assert api.client.delete(f"/api/v1/tasks/{task['id']}", headers=api.headers()).status_code == 200


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("put", "", {"priority": 3}),
        ("delete", "", None),
        ("post", "/cancel", None),
        ("post", "/cleanup", None),
        ("get", "/generation-view", None),
    ],
)
def test_tenants_never_see_each_other(idle_api: Api, method: str, suffix: str, body: Any) -> None:
    mine = idle_api.create(gen())
    other = idle_api.headers(tenant="globex")
    path = (
        f"/api/v1/tasks/generation/{mine['id']}"
        if suffix == "/generation-view"
        else f"/api/v1/tasks/{mine['id']}{suffix}"
    )
    response = idle_api.client.request(method, path, json=body, headers=other)
    assert response.status_code == 404
    assert idle_api.client.get("/api/v1/tasks/", headers=other).json() == []
    assert idle_api.get(mine["id"])["status"] == "PENDING"
    assert idle_api.get(mine["id"])["priority"] == 0


def test_viewer_reads_but_cannot_write(idle_api: Api) -> None:
    task = idle_api.create(gen())
    viewer = idle_api.headers(role=Role.VIEWER)
    assert idle_api.client.get(f"/api/v1/tasks/{task['id']}", headers=viewer).status_code == 200
    for method, path, body in [
        ("post", "/api/v1/tasks/", gen()),
        ("put", f"/api/v1/tasks/{task['id']}", {"priority": 1}),
        ("delete", f"/api/v1/tasks/{task['id']}", None),
        ("post", f"/api/v1/tasks/{task['id']}/cancel", None),
        ("post", f"/api/v1/tasks/{task['id']}/cleanup", None),
    ]:
        response = idle_api.client.request(method, path, json=body, headers=viewer)
        assert response.status_code == 403, (method, path)
    assert task_count(idle_api) == 1 and idle_api.get(task["id"])["status"] == "PENDING"


def test_admin_only_endpoint_enforces_role(idle_api: Api) -> None:
    idle_api.create(gen())
    for role in (Role.SERVICE, Role.VIEWER):
        assert idle_api.client.post("/api/v1/admin/recovery", headers=idle_api.headers(role=role)).status_code == 403
    response = idle_api.client.post("/api/v1/admin/recovery", headers=idle_api.headers(role=Role.ADMIN))
    assert response.status_code == 200 and response.json() == {"republished": 1}


def test_health_is_open(idle_api: Api) -> None:
    response = idle_api.client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy" and response.json()["mode"] == "embedded"
