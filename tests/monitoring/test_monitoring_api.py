"""The task and workflow monitoring endpoints: filters, search, sorting, paging, scope, media, stats."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest

from atelier.core.auth import Role
from atelier.core.time import utcnow
from atelier.monitoring import service as monitoring
from tests.conftest import Api, AppFactory, data_url
from tests.engine.test_workflows_e2e import create as create_workflow
from tests.engine.test_workflows_e2e import generate, wait_end

BASE = "/api/v1/monitoring"
OK = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}}
BAD = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["value"]}}
ADJUST = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": 1, "mode": "pad"}


def get(api: Api, path: str, tenant: str = "acme", role: Role = Role.SERVICE, **params: Any) -> httpx.Response:
    response: httpx.Response = api.client.get(f"{BASE}{path}", params=params, headers=api.headers(tenant, role))
    return response


def ok(api: Api, path: str, **params: Any) -> dict[str, Any]:
    response = get(api, path, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(autouse=True)
def fresh_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own counts (the stats cache is per process)."""
    monkeypatch.setattr(monitoring, "_cache", monitoring._StatsCache())


def test_task_list_filters_sorts_pages_and_scopes(api: Api) -> None:
    done = [api.wait(api.create({**OK, "origin_instance": f"studio-{n % 2}"})["id"]) for n in range(4)]
    failed = api.wait(api.create(BAD)["id"])
    adjusted = api.wait(api.create(ADJUST)["id"])
    api.create(OK, tenant="globex")

    everything = ok(api, "/tasks")
    assert everything["total"] == 6 and everything["pages"] == 1 and everything["page"] == 1
    assert [i["id"] for i in everything["items"]] == [adjusted["id"], failed["id"], *[t["id"] for t in reversed(done)]]
    first = everything["items"][-1]
    assert first["duration_ms"] is not None and first["duration_ms"] >= 0 and first["has_error"] is False
    assert next(i for i in everything["items"] if i["id"] == failed["id"])["has_error"] is True

    assert [i["id"] for i in ok(api, "/tasks", status="FAILED")["items"]] == [failed["id"]]
    assert [i["id"] for i in ok(api, "/tasks", task_type="IMAGE_ADJUSTER")["items"]] == [adjusted["id"]]
    assert ok(api, "/tasks", provider_type="LOCAL")["total"] == 1
    assert ok(api, "/tasks", origin_instance="studio-1", task_type="GENERATION")["total"] == 2
    assert ok(api, "/tasks", sort_by="created_at", sort_order="asc")["items"][0]["id"] == done[0]["id"]
    page = ok(api, "/tasks", page=2, page_size=4)
    assert (page["total"], page["pages"], len(page["items"])) == (6, 2, 2)

    middle = done[2]["created_at"]
    after = ok(api, "/tasks", created_after=middle)
    assert {i["id"] for i in after["items"]} == {done[3]["id"], failed["id"], adjusted["id"]}
    assert ok(api, "/tasks", created_before=middle)["total"] == 2

    target = failed["id"]
    for prefix in (target[:4], target[:13], target[:10].upper()):
        found = ok(api, "/tasks", search=prefix)["items"]
        assert target in [i["id"] for i in found] and all(i["id"].startswith(target[:4]) for i in found)
    assert ok(api, "/tasks", search="not-hex")["total"] == 0

    assert ok(api, "/tasks")["total"] == 6  # globex's task is not acme's
    admin = get(api, "/tasks", role=Role.ADMIN)
    assert admin.json()["total"] == 7  # an admin sees every tenant
    for params in (
        {"sort_by": "prompt"},
        {"sort_by": "updated_at"},
        {"page": 0},
        {"page_size": 501},
        {"status": "LOST"},
    ):
        assert get(api, "/tasks", **params).status_code == 422, params
    assert api.client.get(f"{BASE}/tasks").status_code == 401


def test_counts_stop_at_the_cap(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitoring, "COUNT_CAP", 3)
    for _ in range(5):
        idle_api.create(OK)
    page = ok(idle_api, "/tasks", page_size=2)
    assert (page["total"], page["total_capped"], page["pages"], len(page["items"])) == (3, True, 2, 2)
    assert ok(idle_api, "/tasks", page=3, page_size=2)["items"]  # later pages still answer


def test_task_detail_and_media_with_working_urls(api: Api) -> None:
    task = api.wait(api.create({**ADJUST, "origin_reference": "sku-9"})["id"])
    detail = ok(api, f"/tasks/{task['id']}")
    assert detail["status"] == "COMPLETED" and detail["origin_reference"] == "sku-9"
    assert detail["task_data"]["result_image_path"] == task["result_image_path"]
    assert detail["duration_ms"] >= 0 and detail["queue_name"] == task["queue_name"] and detail["tenant_id"] == "acme"
    media = ok(api, f"/tasks/{task['id']}/media")
    assert [(m["name"], m["media_type"]) for m in media["outputs"]] == [("result_image", "image")]
    assert [m["name"] for m in media["inputs"]] == ["input_image"]
    for item in media["inputs"] + media["outputs"]:
        fetched = api.client.get(item["url"], headers=api.headers())
        assert fetched.status_code == 200 and fetched.headers["content-type"].startswith("image/")
    missing = uuid.uuid4()
    assert get(api, f"/tasks/{missing}").status_code == 404
    assert get(api, f"/tasks/{task['id']}", tenant="globex").status_code == 404
    assert get(api, f"/tasks/{task['id']}/media", tenant="globex").status_code == 404


def test_stats_count_by_status_type_and_provider(api: Api) -> None:
    for body in (OK, OK, BAD, ADJUST):
        api.wait(api.create({**body, "origin_zone": "eu"})["id"])
    api.wait(api.create(OK)["id"])
    api.create(OK, tenant="globex")
    stats = ok(api, "/stats")
    assert stats["total_tasks"] == 5 and stats["tasks_last_hour"] == 5 and stats["tasks_last_24h"] == 5
    assert stats["by_status"] == {"COMPLETED": 4, "FAILED": 1}
    assert stats["by_task_type"] == {"GENERATION": 4, "IMAGE_ADJUSTER": 1}
    assert stats["by_provider"]["LOCAL"] == 1 and sum(stats["by_provider"].values()) == 5
    assert ok(api, "/stats", origin_zone="eu")["total_tasks"] == 4


def test_workflow_list_stats_and_detail(api: Api) -> None:
    good = create_workflow(
        api, generate("a", ["ok"]), generate("b", ["ok"], "a"), generate("c", ["ok"], "a"), name="shoot-1"
    )
    bad = create_workflow(api, generate("x", ["value"]), name="retouch-7")
    assert wait_end(api, good["id"])["status"] == "COMPLETED"
    assert wait_end(api, bad["id"])["status"] == "FAILED"

    listed = ok(api, "/workflows")
    assert [i["id"] for i in listed["items"]] == [bad["id"], good["id"]] and listed["total"] == 2
    failed_item = listed["items"][0]
    assert failed_item["has_error"] is True and failed_item["duration_ms"] >= 0
    assert [i["id"] for i in ok(api, "/workflows", status="COMPLETED")["items"]] == [good["id"]]
    assert [i["id"] for i in ok(api, "/workflows", search="shoot")["items"]] == [good["id"]]
    assert [i["id"] for i in ok(api, "/workflows", search=bad["id"][:8])["items"]] == [bad["id"]]
    assert ok(api, "/workflows", search="%")["total"] == 0  # LIKE wildcards are literal
    assert ok(api, "/workflows", sort_by="name", sort_order="asc")["items"][0]["id"] == bad["id"]
    assert (
        ok(api, "/workflows", tenant="globex")["total"] == 0
        if False
        else get(api, "/workflows", tenant="globex").json()["total"] == 0
    )

    stats = ok(api, "/workflows/stats")
    assert stats["total_workflows"] == 2 and stats["by_status"] == {"COMPLETED": 1, "FAILED": 1}
    assert stats["avg_steps_per_workflow"] == 2.0 and stats["workflows_last_hour"] == 2

    detail = ok(api, f"/workflows/{good['id']}")
    order = [s["step_id"] for s in detail["steps"]]
    assert order[0] == "a" and sorted(order) == ["a", "b", "c"]  # topological: the root first
    assert all(s["status"] == "COMPLETED" and s["duration_ms"] is not None for s in detail["steps"])
    assert detail["steps"][1]["dependencies"] == ["a"] and detail["duration_ms"] >= 0
    assert get(api, f"/workflows/{good['id']}", tenant="globex").status_code == 404
    assert get(api, f"/workflows/{uuid.uuid4()}").status_code == 404


def test_created_window_excludes_older_tasks(idle_api: Api) -> None:
    idle_api.create(OK)
    future = (utcnow() + timedelta(minutes=5)).isoformat()
    assert ok(idle_api, "/tasks", created_after=future)["total"] == 0
    assert ok(idle_api, "/tasks", created_before=future)["total"] == 1
    naive = (utcnow() + timedelta(minutes=5)).replace(tzinfo=None).isoformat()  # no offset: taken as UTC
    assert ok(idle_api, "/tasks", created_before=naive)["total"] == 1
    assert ok(idle_api, "/workflows", created_after=naive)["total"] == 0


def test_app_factory_admin_scope(app_factory: AppFactory) -> None:
    api = app_factory(worker=False)
    api.create(OK)
    api.create(OK, tenant="globex")
    assert get(api, "/stats", role=Role.ADMIN).json()["total_tasks"] == 2
    assert ok(api, "/stats")["total_tasks"] == 1


def test_stale_stats_are_served_while_one_refresh_runs(idle_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    idle_api.create(OK)
    assert ok(idle_api, "/stats")["total_tasks"] == 1  # computed on the spot: nothing cached yet
    idle_api.create(OK)
    assert ok(idle_api, "/stats")["total_tasks"] == 1  # fresh cache: the new task is not counted yet
    monkeypatch.setattr(monitoring, "STATS_TTL_SECONDS", 0.0)
    assert ok(idle_api, "/stats")["total_tasks"] == 1  # stale: answered at once, a refresh starts behind it
    deadline = time.monotonic() + 10
    while ok(idle_api, "/stats")["total_tasks"] != 2:
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.02)
