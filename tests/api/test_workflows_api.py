"""Workflows API (/api/v1/workflows): create/validate, read, list, PATCH, start, cancel, resume, cleanup, auth.

These run on an idle app (no worker): step tasks stay PENDING, so nothing moves unless the test moves it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from httpx import Response

from atelier.core.auth import Role
from tests.api.helpers import assert_422, stored_files, task_count
from tests.conftest import Api, b64_png, png_bytes

BASE = "/api/v1/workflows/"

WORKFLOW_REQUIRED = {
    "id",
    "name",
    "status",
    "total_steps",
    "completed_steps",
    "progress",
    "config",
    "suppress_subtask_events",
    "origin_instance",
    "errors",
    "created_at",
    "updated_at",
}
WORKFLOW_OPTIONAL = {
    "description",
    "current_step",
    "final_step_id",
    "final_step_result",
    "canvas_task_id",
    "origin_zone",
    "origin_tenant_id",
    "origin_reference",
    "webhook_url",
    "error_message",
    "started_at",
    "completed_at",
    "is_deleted",
    "deleted_at",
    "steps",
}
STEP_FIELDS = {
    "id",
    "step_id",
    "task_type",
    "config",
    "provider_config",
    "active_provider_capabilities",
    "fallback_provider_type",
    "fallback_provider_config",
    "fallback_provider_capabilities",
    "dependencies",
    "input_mappings",
    "status",
    "task_id",
    "result",
    "error_message",
    "started_at",
    "completed_at",
    "retry_count",
    "max_retries",
    "created_at",
    "updated_at",
}


# ---------------------------------------------------------------------------------------------- helpers


def adjust(step_id: str, parent: str | None = None, **config: Any) -> dict[str, Any]:
    """A LOCAL IMAGE_ADJUSTER step: a root with an inline image, or fed by ``parent``'s result image."""
    step: dict[str, Any] = {"id": step_id, "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1, **config}}
    if parent is None:
        step["config"].setdefault("input_image", b64_png((8, 4)))
    else:
        step["input_mappings"] = [{"from_step": parent, "from_field": "result_image_path", "to_field": "input_image"}]
    return step


def generate(step_id: str, *depends_on: str, **config: Any) -> dict[str, Any]:
    """A scripted GENERATION step."""
    return {
        "id": step_id,
        "task_type": "GENERATION",
        "config": {"prompt": f"step {step_id}", **config},
        "depends_on": list(depends_on),
    }


def workflow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A CreateWorkflow body."""
    return {"name": "wf", "origin_instance": "tests", "steps": list(steps), **fields}


def chain() -> dict[str, Any]:
    """root → mid → leaf, all IMAGE_ADJUSTER."""
    return workflow(adjust("root"), adjust("mid", "root"), adjust("leaf", "mid"))


def post(
    api: Api, body: dict[str, Any], *, start: bool = True, tenant: str = "acme", role: Role = Role.SERVICE
) -> Response:
    """POST a workflow definition."""
    params = {} if start else {"start": "false"}
    response: Response = api.client.post(BASE, json=body, params=params, headers=api.headers(tenant, role))
    return response


def create(api: Api, body: dict[str, Any], *, start: bool = True, tenant: str = "acme") -> dict[str, Any]:
    """Create a workflow and assert it was accepted."""
    response = post(api, body, start=start, tenant=tenant)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def get(api: Api, workflow_id: str, tenant: str = "acme") -> dict[str, Any]:
    """GET a workflow."""
    response = api.client.get(f"{BASE}{workflow_id}", headers=api.headers(tenant))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def listing(api: Api, tenant: str = "acme", **params: Any) -> dict[str, Any]:
    """GET the workflow list."""
    response = api.client.get(BASE, params=params, headers=api.headers(tenant))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def action(api: Api, workflow_id: str, verb: str, tenant: str = "acme", role: Role = Role.SERVICE) -> Response:
    """POST …/{id}/{verb} (start, resume, cleanup) or DELETE (cancel)."""
    headers = api.headers(tenant, role)
    response: Response
    if verb == "cancel":
        response = api.client.delete(f"{BASE}{workflow_id}", headers=headers)
    else:
        response = api.client.post(f"{BASE}{workflow_id}/{verb}", headers=headers)
    return response


def steps_of(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The workflow's steps by step id."""
    return {s["step_id"]: s for s in wf["steps"]}


def assert_nothing_written(api: Api) -> None:
    """No workflow (not even a deleted one) and no task exist."""
    assert listing(api, include_deleted="true") == {"workflows": [], "total": 0, "skip": 0, "limit": 50}
    assert task_count(api) == 0


def refusal(response: Response, *loc: str | int) -> str:
    """A 422 whose first error sits exactly at ``("body", *loc)``; returns its message."""
    body = assert_422(response)
    error = body["detail"][0]
    assert tuple(error["loc"]) == ("body", *loc), body
    message: str = error["msg"]
    return message


# ---------------------------------------------------------------------------------------------- create


def test_create_returns_the_full_workflow_started(idle_api: Api) -> None:
    body = workflow(
        # defined out of order on purpose: the response lists them topologically
        {**adjust("d", "b"), "depends_on": ["c"]},
        adjust("b", "a", mode="crop"),
        adjust("a"),
        adjust("c", "a", mode="pad"),
        description="a diamond",
        config={"owner": "qa"},
        origin_zone="eu",
        origin_tenant_id="t-1",
        origin_reference="ref-9",
        webhook_url="https://hooks.example.com/wf",
    )
    response = post(idle_api, body)
    assert response.status_code == 200, response.text
    wf = response.json()
    assert wf.keys() >= WORKFLOW_REQUIRED and wf.keys() >= WORKFLOW_OPTIONAL
    uuid.UUID(wf["id"])
    assert wf["status"] == "RUNNING"
    assert (wf["name"], wf["description"], wf["config"]) == ("wf", "a diamond", {"owner": "qa"})
    assert (wf["origin_instance"], wf["origin_zone"], wf["origin_tenant_id"], wf["origin_reference"]) == (
        "tests",
        "eu",
        "t-1",
        "ref-9",
    )
    assert wf["webhook_url"] == "https://hooks.example.com/wf"
    assert wf["suppress_subtask_events"] is True
    assert (wf["total_steps"], wf["completed_steps"], wf["progress"]) == (4, 0, 0.0)
    assert wf["errors"] == [] and wf["error_message"] is None
    assert wf["final_step_id"] == "d" and wf["final_step_result"] is None
    assert wf["started_at"] is not None and wf["completed_at"] is None
    assert wf["is_deleted"] is False and wf["deleted_at"] is None
    assert [s["step_id"] for s in wf["steps"]] == ["a", "b", "c", "d"]
    for step in wf["steps"]:
        assert step.keys() >= STEP_FIELDS
        uuid.UUID(step["id"])
        assert step["task_type"] == "IMAGE_ADJUSTER"
        assert step["retry_count"] == 0 and step["result"] is None
    steps = steps_of(wf)
    assert steps["d"]["dependencies"] == ["b", "c"]  # depends_on ∪ mapping sources
    assert steps["b"]["input_mappings"] == [
        {"from_step": "a", "from_field": "result_image_path", "to_field": "input_image", "transform": None}
    ]
    root = steps["a"]
    assert root["status"] == "RUNNING" and root["task_id"] and root["started_at"]
    for sid in "bcd":
        assert steps[sid]["status"] == "PENDING" and steps[sid]["task_id"] is None
    task = idle_api.get(root["task_id"])
    assert task["task_type"] == "IMAGE_ADJUSTER" and task["status"] == "PENDING"
    assert task["workflow_id"] == wf["id"]
    assert task["origin_instance"] == "tests" and task["origin_tenant_id"] == "t-1"
    assert task["aspect_ratio"] == 1.0
    assert task_count(idle_api) == 1  # only the root step has a task
    assert get(idle_api, wf["id"]) == wf


def test_create_with_start_false_stays_pending(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    assert wf["status"] == "PENDING"
    assert wf["started_at"] is None
    assert [s["status"] for s in wf["steps"]] == ["PENDING"] * 3
    assert all(s["task_id"] is None for s in wf["steps"])
    assert task_count(idle_api) == 0
    # the status surfaces answer for a workflow id as for a job
    v2 = idle_api.client.get(f"/v2/status/{wf['id']}", headers=idle_api.headers())
    assert v2.status_code == 200
    assert v2.json() == {"request_id": wf["id"], "status": "IN_PROGRESS", "progress": 0.0}
    job = idle_api.client.get(f"/v1/jobs/{wf['id']}", headers=idle_api.headers())
    assert job.status_code == 200
    assert job.json() == {
        "job_id": wf["id"],
        "status": "pending",
        "created_at": job.json()["created_at"],
        "scenes_completed": 0,
        "scenes_total": 3,
    }
    assert idle_api.client.get(f"/v2/status/{wf['id']}", headers=idle_api.headers("globex")).status_code == 404


def test_step_settings_are_kept(idle_api: Api) -> None:
    step = {
        **generate("g", prompt="hello"),
        "max_retries": 3,
        "active_provider_capabilities": ["OUTPUT_SIZE"],
        "fallback_provider_type": "VERTEX",
        "fallback_provider_capabilities": ["UPSCALE_2X"],
    }
    wf = create(idle_api, workflow(step))
    stored = wf["steps"][0]
    assert stored["max_retries"] == 3
    assert stored["active_provider_capabilities"] == ["OUTPUT_SIZE"]
    assert stored["fallback_provider_type"] == "VERTEX"
    assert stored["fallback_provider_capabilities"] == ["UPSCALE_2X"]
    task = idle_api.get(stored["task_id"])
    assert task["prompt"] == "hello"
    assert task["max_retries"] == 3
    assert task["fallback_provider_type"] == "VERTEX"
    assert task["active_provider_capabilities"] == ["OUTPUT_SIZE"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"name": ""}, ("name",)),
        ({"name": "n" * 256}, ("name",)),
        ({"description": "d" * 1001}, ("description",)),
        ({"steps": []}, ("steps",)),
        ({"origin_instance": ""}, ("origin_instance",)),
        ({"origin_instance": "o" * 101}, ("origin_instance",)),
        ({"origin_zone": "z" * 51}, ("origin_zone",)),
        ({"origin_tenant_id": "t" * 101}, ("origin_tenant_id",)),
        ({"origin_reference": "r" * 513}, ("origin_reference",)),
        ({"webhook_url": "ftp://example.com/x"}, ("webhook_url",)),
        ({"unexpected": 1}, ("unexpected",)),
    ],
)
def test_create_limits(idle_api: Api, change: dict[str, Any], loc: tuple[str, ...]) -> None:
    refusal(post(idle_api, {**chain(), **change}), *loc)
    assert_nothing_written(idle_api)


@pytest.mark.parametrize("missing", ["name", "steps", "origin_instance"])
def test_create_requires_fields(idle_api: Api, missing: str) -> None:
    body = chain()
    del body[missing]
    refusal(post(idle_api, body), missing)
    assert_nothing_written(idle_api)


def test_create_accepts_the_limits_exactly(idle_api: Api) -> None:
    wf = create(idle_api, {**chain(), "name": "n" * 255, "description": "d" * 1000, "origin_instance": "o" * 100})
    assert (len(wf["name"]), len(wf["description"]), len(wf["origin_instance"])) == (255, 1000, 100)


# Each case: the steps, the loc of the refusal under body, words the message must contain.
INVALID_DAGS: dict[str, tuple[list[dict[str, Any]], tuple[str | int, ...], list[str]]] = {
    "duplicate_id": ([adjust("a"), adjust("b", "a"), adjust("a")], ("steps", 2, "id"), ["duplicate", "'a'"]),
    "blank_id": ([adjust("a"), adjust("  ")], ("steps", 1, "id"), ["blank"]),
    "unknown_depends_on": (
        [adjust("a"), {**adjust("b", "a"), "depends_on": ["a", "ghost"]}],
        ("steps", 1, "depends_on", 1),
        ["'b'", "unknown step 'ghost'"],
    ),
    "self_dependency": (
        [adjust("a"), {**adjust("b", "a"), "depends_on": ["b"]}],
        ("steps", 1, "depends_on", 0),
        ["'b'", "itself"],
    ),
    "cycle": (
        [
            {**generate("a", "c")},
            {**generate("b", "a")},
            {**generate("c", "b")},
            generate("x"),
        ],
        ("steps",),
        ["cycle", "a → b → c → a"],
    ),
    "cycle_through_mappings": (
        [
            generate("root"),
            {**adjust("p", "q"), "depends_on": ["root"]},
            adjust("q", "p"),
        ],
        ("steps",),
        ["cycle", "p → q → p"],
    ),
    "unknown_task_type": (
        [adjust("a"), {"id": "b", "task_type": "TELEPORT", "config": {}}],
        ("steps", 1, "task_type"),
        ["GENERATION"],
    ),
    "mapping_to_missing_field": (
        [
            adjust("a"),
            {
                "id": "b",
                "task_type": "GENERATION",
                "config": {"prompt": "x"},
                "input_mappings": [{"from_step": "a", "from_field": "result_image_path", "to_field": "input_image"}],
            },
        ],
        ("steps", 1, "input_mappings", 0, "to_field"),
        ["'b'", "'input_image'", "GENERATION"],
    ),
    "mapping_from_unknown_step": (
        [
            adjust("a"),
            {
                **adjust("b", "a"),
                "input_mappings": [
                    {"from_step": "a", "from_field": "result_image_path", "to_field": "input_image"},
                    {"from_step": "nowhere", "from_field": "result_image_path", "to_field": "reference_image"},
                ],
            },
        ],
        ("steps", 1, "input_mappings", 1, "from_step"),
        ["'b'", "'nowhere'"],
    ),
    "mapping_from_self": (
        [
            adjust("a"),
            {
                **adjust("b", "a"),
                "input_mappings": [{"from_step": "b", "from_field": "result_image_path", "to_field": "input_image"}],
            },
        ],
        ("steps", 1, "input_mappings", 0, "from_step"),
        ["'b'", "itself"],
    ),
    "mapping_from_missing_output": (
        [
            adjust("a"),
            {
                **adjust("b", "a"),
                "input_mappings": [{"from_step": "a", "from_field": "no_such_output", "to_field": "input_image"}],
            },
        ],
        ("steps", 1, "input_mappings", 0, "from_field"),
        ["'b'", "'no_such_output'"],
    ),
    "unknown_transform": (
        [
            adjust("a"),
            {
                **adjust("b", "a"),
                "input_mappings": [
                    {
                        "from_step": "a",
                        "from_field": "result_image_path",
                        "to_field": "input_image",
                        "transform": "uppercase",
                    }
                ],
            },
        ],
        ("steps", 1, "input_mappings", 0, "transform"),
        ["'b'", "'uppercase'"],
    ),
    "unknown_config_key": (
        [adjust("a"), adjust("b", "a", colour="blue")],
        ("steps", 1, "config", "colour"),
        ["'b'", "'colour'"],
    ),
    "root_config_invalid": (
        [{"id": "a", "task_type": "IMAGE_ADJUSTER", "config": {"input_image": b64_png()}}, adjust("b", "a")],
        ("steps", 0, "config"),
        ["'a'", "aspect_ratio"],
    ),
    "root_config_field_invalid": (
        [adjust("a"), {**generate("g"), "config": {"prompt": "x", "width": 0}}],
        ("steps", 1, "config", "width"),
        ["'g'", "width"],
    ),
    "dependant_config_invalid": (
        [adjust("a"), {**adjust("b", "a"), "config": {"target_width": 10}}],
        ("steps", 1, "config"),
        ["'b'", "target_height"],
    ),
    "unknown_provider_type": (
        [adjust("a"), {**generate("g"), "provider_config": {"provider_type": "NOPE"}}],
        ("steps", 1, "provider_config"),
        ["'g'", "NOPE"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_DAGS))
@pytest.mark.parametrize("start", [True, False], ids=["started", "unstarted"])
def test_invalid_definitions_are_refused_before_any_write(idle_api: Api, case: str, start: bool) -> None:
    steps, loc, words = INVALID_DAGS[case]
    message = refusal(post(idle_api, workflow(*steps), start=start), *loc)
    for word in words:
        assert word in message, message
    assert_nothing_written(idle_api)
    assert stored_files(idle_api) == []  # the root's inline image was not stored either


def test_mapped_fields_satisfy_required_inputs(idle_api: Api) -> None:
    """input_image of a dependant arrives by mapping: its absence from config is not an error."""
    wf = create(idle_api, workflow(adjust("a"), adjust("b", "a")))
    assert [s["status"] for s in wf["steps"]] == ["RUNNING", "PENDING"]


def test_viewer_cannot_create(idle_api: Api) -> None:
    response = post(idle_api, chain(), role=Role.VIEWER)
    assert response.status_code == 403, response.text
    assert_nothing_written(idle_api)


def test_every_route_needs_a_token(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    calls = [
        idle_api.client.post(BASE, json=chain()),
        idle_api.client.get(BASE),
        idle_api.client.get(f"{BASE}{wf['id']}"),
        idle_api.client.patch(f"{BASE}{wf['id']}", json={"name": "x"}),
        idle_api.client.delete(f"{BASE}{wf['id']}"),
        idle_api.client.post(f"{BASE}{wf['id']}/start"),
        idle_api.client.post(f"{BASE}{wf['id']}/resume"),
        idle_api.client.post(f"{BASE}{wf['id']}/cleanup"),
    ]
    assert [r.status_code for r in calls] == [401] * len(calls)
    assert get(idle_api, wf["id"])["status"] == "PENDING"
    assert listing(idle_api)["total"] == 1


def test_viewer_reads_but_cannot_change(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    viewer = idle_api.headers(role=Role.VIEWER)
    assert idle_api.client.get(f"{BASE}{wf['id']}", headers=viewer).status_code == 200
    assert idle_api.client.get(BASE, headers=viewer).json()["total"] == 1
    assert idle_api.client.patch(f"{BASE}{wf['id']}", json={"name": "x"}, headers=viewer).status_code == 403
    for verb in ("start", "cancel", "resume", "cleanup"):
        assert action(idle_api, wf["id"], verb, role=Role.VIEWER).status_code == 403, verb
    after = get(idle_api, wf["id"])
    assert (after["name"], after["status"], after["is_deleted"]) == ("wf", "PENDING", False)
    assert task_count(idle_api) == 0


def test_tenants_are_isolated(idle_api: Api) -> None:
    mine = create(idle_api, chain(), start=False)
    theirs = create(idle_api, chain(), start=False, tenant="globex")
    assert [w["id"] for w in listing(idle_api)["workflows"]] == [mine["id"]]
    assert [w["id"] for w in listing(idle_api, tenant="globex")["workflows"]] == [theirs["id"]]
    other = idle_api.headers("globex")
    assert idle_api.client.get(f"{BASE}{mine['id']}", headers=other).status_code == 404
    assert idle_api.client.patch(f"{BASE}{mine['id']}", json={"name": "x"}, headers=other).status_code == 404
    for verb in ("start", "cancel", "resume", "cleanup"):
        assert action(idle_api, mine["id"], verb, tenant="globex").status_code == 404, verb
    untouched = get(idle_api, mine["id"])
    assert (untouched["name"], untouched["status"], untouched["is_deleted"]) == ("wf", "PENDING", False)
    assert task_count(idle_api) == 0


# ---------------------------------------------------------------------------------------------- read


def test_get_unknown_is_404(idle_api: Api) -> None:
    response = idle_api.client.get(f"{BASE}{uuid.uuid4()}", headers=idle_api.headers())
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


def test_list_newest_first_with_paging(idle_api: Api) -> None:
    ids = [create(idle_api, {**chain(), "name": f"wf-{n}"}, start=False)["id"] for n in range(4)]
    page = listing(idle_api)
    assert [w["id"] for w in page["workflows"]] == ids[::-1]
    assert (page["total"], page["skip"], page["limit"]) == (4, 0, 50)
    assert all(len(w["steps"]) == 3 for w in page["workflows"])
    page = listing(idle_api, skip=1, limit=2)
    assert [w["id"] for w in page["workflows"]] == [ids[2], ids[1]]
    assert (page["total"], page["skip"], page["limit"]) == (4, 1, 2)
    assert listing(idle_api, skip=4)["workflows"] == []


def test_list_default_limit_is_50(idle_api: Api) -> None:
    small = workflow(generate("only"))
    for _ in range(51):
        create(idle_api, small, start=False)
    page = listing(idle_api)
    assert (len(page["workflows"]), page["total"], page["limit"]) == (50, 51, 50)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"skip": -1}, {"status": "DONE"}])
def test_list_rejects_bad_queries(idle_api: Api, params: dict[str, Any]) -> None:
    response = idle_api.client.get(BASE, params=params, headers=idle_api.headers())
    assert_422(response, "query", next(iter(params)))


def test_list_filters(idle_api: Api) -> None:
    pending = create(idle_api, {**chain(), "origin_instance": "alpha", "origin_tenant_id": "t1"}, start=False)
    running = create(idle_api, {**chain(), "origin_instance": "beta", "origin_tenant_id": "t1"})
    other = create(idle_api, {**chain(), "origin_instance": "alpha", "origin_tenant_id": "t2"})

    def ids(**params: Any) -> list[str]:
        return [w["id"] for w in listing(idle_api, **params)["workflows"]]

    assert ids(status="RUNNING") == [other["id"], running["id"]]
    assert ids(status="PENDING") == [pending["id"]]
    assert ids(status="COMPLETED") == []
    assert ids(origin_instance="alpha") == [other["id"], pending["id"]]
    assert ids(origin_tenant_id="t1") == [running["id"], pending["id"]]
    assert ids(origin_instance="alpha", origin_tenant_id="t1") == [pending["id"]]
    assert listing(idle_api, origin_instance="alpha")["total"] == 2


# ---------------------------------------------------------------------------------------------- PATCH


def test_patch_changes_only_name_description_webhook(idle_api: Api) -> None:
    wf = create(idle_api, {**chain(), "description": "before"}, start=False)
    url = f"{BASE}{wf['id']}"
    response = idle_api.client.patch(
        url,
        json={"name": "renamed", "description": "after", "webhook_url": "https://hooks.example.com/x"},
        headers=idle_api.headers(),
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["name"], changed["description"], changed["webhook_url"]) == (
        "renamed",
        "after",
        "https://hooks.example.com/x",
    )
    assert changed["updated_at"] >= wf["updated_at"]
    assert get(idle_api, wf["id"]) == changed  # committed
    # only what is sent changes; description may be cleared
    response = idle_api.client.patch(url, json={"description": None}, headers=idle_api.headers())
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["description"]) == ("renamed", None)
    assert response.json()["steps"] == changed["steps"]
    assert response.json()["status"] == "PENDING"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"status": "COMPLETED"}, ("status",)),
        ({"steps": []}, ("steps",)),
        ({"origin_instance": "elsewhere"}, ("origin_instance",)),
        ({"config": {"a": 1}}, ("config",)),
        ({"name": None}, ("name",)),
        ({"name": ""}, ("name",)),
        ({"name": "n" * 256}, ("name",)),
        ({"description": "d" * 1001}, ("description",)),
        ({"webhook_url": "not-a-url"}, ("webhook_url",)),
        ({"webhook_url": "https://x.example.com/" + "p" * 500}, ("webhook_url",)),
    ],
)
def test_patch_refuses_other_fields_and_bad_values(idle_api: Api, body: dict[str, Any], loc: tuple[str, ...]) -> None:
    wf = create(idle_api, chain(), start=False)
    response = idle_api.client.patch(f"{BASE}{wf['id']}", json=body, headers=idle_api.headers())
    refusal(response, *loc)
    after = get(idle_api, wf["id"])
    assert (after["name"], after["status"], after["origin_instance"], after["webhook_url"]) == (
        "wf",
        "PENDING",
        "tests",
        None,
    )
    assert len(after["steps"]) == 3


def test_patch_unknown_is_404(idle_api: Api) -> None:
    response = idle_api.client.patch(f"{BASE}{uuid.uuid4()}", json={"name": "x"}, headers=idle_api.headers())
    assert response.status_code == 404


# ---------------------------------------------------------------------------------------------- start


def test_start_pending_only(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    response = action(idle_api, wf["id"], "start")
    assert response.status_code == 200, response.text
    started = response.json()
    assert started["status"] == "RUNNING" and started["started_at"]
    steps = steps_of(started)
    assert steps["root"]["status"] == "RUNNING"
    assert idle_api.get(steps["root"]["task_id"])["workflow_id"] == wf["id"]
    assert (steps["mid"]["status"], steps["leaf"]["status"]) == ("PENDING", "PENDING")
    assert task_count(idle_api) == 1
    again = action(idle_api, wf["id"], "start")
    assert again.status_code == 409
    assert "RUNNING" in again.json()["detail"] and "PENDING" in again.json()["detail"]
    assert task_count(idle_api) == 1  # no second root task
    assert get(idle_api, wf["id"]) == started


def test_start_unknown_is_404(idle_api: Api) -> None:
    assert action(idle_api, str(uuid.uuid4()), "start").status_code == 404


# ---------------------------------------------------------------------------------------------- cancel


def test_cancel_pending_workflow(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    response = action(idle_api, wf["id"], "cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "CANCELLED" and cancelled["completed_at"]
    assert [s["status"] for s in cancelled["steps"]] == ["CANCELLED"] * 3
    assert all(s["task_id"] is None for s in cancelled["steps"])
    assert task_count(idle_api) == 0
    assert get(idle_api, wf["id"]) == cancelled
    for verb in ("cancel", "start", "resume"):
        refused = action(idle_api, wf["id"], verb)
        assert refused.status_code == 409, verb
        assert "CANCELLED" in refused.json()["detail"]
    assert task_count(idle_api) == 0


def test_cancel_running_workflow_cancels_its_pending_tasks(idle_api: Api) -> None:
    wf = create(
        idle_api, workflow(adjust("a"), adjust("b"), adjust("c", "a"), {**adjust("d", "c"), "depends_on": ["b"]})
    )
    roots = [steps_of(wf)[sid]["task_id"] for sid in ("a", "b")]
    assert all(roots)
    response = action(idle_api, wf["id"], "cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "CANCELLED"
    steps = steps_of(cancelled)
    assert {sid: s["status"] for sid, s in steps.items()} == dict.fromkeys("abcd", "CANCELLED")
    assert [steps[sid]["task_id"] for sid in ("a", "b")] == roots
    assert steps["c"]["task_id"] is None and steps["d"]["task_id"] is None
    for task_id in roots:
        task = idle_api.get(task_id)
        assert task["status"] == "CANCELLED" and task["error_category"] == "CANCELLED"
    assert task_count(idle_api) == 2
    assert get(idle_api, wf["id"]) == cancelled
    again = action(idle_api, wf["id"], "cancel")
    assert again.status_code == 409 and "CANCELLED" in again.json()["detail"]


def test_cancel_unknown_is_404(idle_api: Api) -> None:
    assert action(idle_api, str(uuid.uuid4()), "cancel").status_code == 404


# ---------------------------------------------------------------------------------------------- resume


def upload(api: Api, path: str, data: bytes) -> None:
    """Put an image into the tenant's storage."""
    response = api.client.post(
        f"/api/v1/storage/images/{path}", files={"file": ("x.png", data, "image/png")}, headers=api.headers()
    )
    assert response.status_code == 200, response.text


def test_a_root_that_cannot_start_fails_the_workflow_and_resume_retries_it(idle_api: Api) -> None:
    body = workflow(
        adjust("broken", input_image="in/later.png"),  # not in storage yet: its task cannot be created
        adjust("after", "broken"),
    )
    wf = create(idle_api, body)
    assert wf["status"] == "FAILED", wf
    assert wf["error_message"].startswith("step 'broken' failed") and "in/later.png" in wf["error_message"]
    assert wf["errors"] == [wf["error_message"]]
    assert wf["completed_at"] is not None and wf["current_step"] is None
    steps = steps_of(wf)
    assert steps["broken"]["status"] == "FAILED" and steps["broken"]["task_id"] is None
    assert "in/later.png" in steps["broken"]["error_message"]
    assert steps["after"]["task_id"] is None
    assert task_count(idle_api) == 0
    assert [w["id"] for w in listing(idle_api, status="FAILED")["workflows"]] == [wf["id"]]

    upload(idle_api, "in/later.png", png_bytes((8, 4)))
    response = action(idle_api, wf["id"], "resume")
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["status"] == "RUNNING" and resumed["error_message"] is None and resumed["completed_at"] is None
    assert resumed["started_at"] == wf["started_at"]
    steps = steps_of(resumed)
    assert steps["broken"]["status"] == "RUNNING" and steps["broken"]["task_id"]
    assert steps["broken"]["error_message"] is None
    assert (steps["after"]["status"], steps["after"]["task_id"]) == ("PENDING", None)
    task = idle_api.get(steps["broken"]["task_id"])
    assert task["input_image_path"] == "in/later.png" and task["workflow_id"] == wf["id"]
    assert task_count(idle_api) == 1
    assert get(idle_api, wf["id"]) == resumed
    again = action(idle_api, wf["id"], "resume")
    assert again.status_code == 409 and "RUNNING" in again.json()["detail"]
    assert task_count(idle_api) == 1


def test_dependants_of_a_step_that_cannot_start_are_skipped(idle_api: Api) -> None:
    """A step whose task is refused at start fails; the steps under it can never run and must say so at once."""
    wf = create(idle_api, workflow(adjust("broken", input_image="in/missing.png"), adjust("after", "broken")))
    assert wf["status"] == "FAILED"
    assert "step 'broken' failed" in wf["error_message"] and "in/missing.png" in wf["error_message"]
    steps = steps_of(wf)
    assert steps["broken"]["status"] == "FAILED"
    assert steps["after"]["status"] == "SKIPPED", steps["after"]
    assert steps["after"]["task_id"] is None
    assert (wf["completed_steps"], wf["progress"]) == (0, 1.0)  # every step has finished, none completed
    assert get(idle_api, wf["id"]) == wf
    assert task_count(idle_api) == 0


def test_resume_refused_unless_failed_or_paused(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    refused = action(idle_api, wf["id"], "resume")
    assert refused.status_code == 409
    assert "PENDING" in refused.json()["detail"] and "FAILED or PAUSED" in refused.json()["detail"]
    assert get(idle_api, wf["id"])["status"] == "PENDING"
    running = create(idle_api, chain())
    refused = action(idle_api, running["id"], "resume")
    assert refused.status_code == 409 and "RUNNING" in refused.json()["detail"]
    assert get(idle_api, running["id"]) == running
    assert task_count(idle_api) == 1
    assert action(idle_api, str(uuid.uuid4()), "resume").status_code == 404


# ---------------------------------------------------------------------------------------------- cleanup


def cleanup(api: Api, workflow_id: str, cleanup_tasks: bool | None = None) -> Response:
    """POST …/cleanup."""
    params = {} if cleanup_tasks is None else {"cleanup_tasks": str(cleanup_tasks).lower()}
    response: Response = api.client.post(f"{BASE}{workflow_id}/cleanup", params=params, headers=api.headers())
    return response


def cancelled_chain(api: Api) -> tuple[dict[str, Any], str]:
    """A started chain, cancelled (its root task CANCELLED, its inline input stored); and the root's task id."""
    wf = create(api, chain())
    root_task = steps_of(wf)["root"]["task_id"]
    assert action(api, wf["id"], "cancel").status_code == 200
    return wf, root_task


def test_cleanup_with_tasks(idle_api: Api) -> None:
    wf, root_task = cancelled_chain(idle_api)
    keep = create(idle_api, chain(), start=False)
    assert stored_files(idle_api) == [f"tenants/acme/adjustments/{root_task}/inputs/input_image_path.png"]
    response = cleanup(idle_api, wf["id"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.keys() == {"workflow", "cleanup"}
    assert body["workflow"]["id"] == wf["id"]
    assert body["workflow"]["is_deleted"] is True and body["workflow"]["deleted_at"]
    report = body["cleanup"]
    assert report.keys() == {"tasks_processed", "tasks_cleaned", "deleted_paths", "errors"}
    assert (report["tasks_processed"], report["tasks_cleaned"], report["errors"]) == (1, 1, [])
    assert report["deleted_paths"] == [f"adjustments/{root_task}/inputs/input_image_path.png"]
    assert stored_files(idle_api) == []
    task = idle_api.get(root_task)
    assert task["is_deleted"] is True and task["deleted_at"]
    # hidden from lists unless asked for
    assert [w["id"] for w in listing(idle_api)["workflows"]] == [keep["id"]]
    assert listing(idle_api)["total"] == 1
    shown = listing(idle_api, include_deleted="true")
    assert [w["id"] for w in shown["workflows"]] == [keep["id"], wf["id"]] and shown["total"] == 2
    assert shown["workflows"][1]["is_deleted"] is True


def test_cleanup_without_tasks_keeps_them(idle_api: Api) -> None:
    wf, root_task = cancelled_chain(idle_api)
    before = [f for f in stored_files(idle_api) if root_task in f]
    assert before
    response = cleanup(idle_api, wf["id"], cleanup_tasks=False)
    assert response.status_code == 200, response.text
    report = response.json()["cleanup"]
    assert report == {"tasks_processed": 0, "tasks_cleaned": 0, "deleted_paths": [], "errors": []}
    assert response.json()["workflow"]["is_deleted"] is True
    assert [f for f in stored_files(idle_api) if root_task in f] == before
    task = idle_api.get(root_task)
    assert task["is_deleted"] is False and task["deleted_at"] is None
    assert listing(idle_api)["workflows"] == []
    assert [w["id"] for w in listing(idle_api, include_deleted="true")["workflows"]] == [wf["id"]]


def test_cleanup_refuses_a_workflow_with_a_running_step(idle_api: Api) -> None:
    wf = create(idle_api, chain())
    response = cleanup(idle_api, wf["id"])
    assert response.status_code == 409
    assert "RUNNING" in response.json()["detail"]
    assert get(idle_api, wf["id"])["is_deleted"] is False
    assert idle_api.get(steps_of(wf)["root"]["task_id"])["is_deleted"] is False


def test_cleanup_of_a_never_started_workflow(idle_api: Api) -> None:
    wf = create(idle_api, chain(), start=False)
    response = cleanup(idle_api, wf["id"])
    assert response.status_code == 200, response.text
    assert response.json()["cleanup"] == {"tasks_processed": 0, "tasks_cleaned": 0, "deleted_paths": [], "errors": []}
    assert listing(idle_api)["total"] == 0
    assert listing(idle_api, include_deleted="true")["total"] == 1
    assert cleanup(idle_api, str(uuid.uuid4())).status_code == 404


def test_the_readme_example_is_accepted(idle_api: Api) -> None:
    body = {
        "name": "shoot",
        "origin_instance": "studio-1",
        "steps": [
            {"id": "generate", "task_type": "GENERATION", "config": {"prompt": "a linen shirt on a hanger"}},
            {
                "id": "cutout",
                "task_type": "BACKGROUND_REMOVAL",
                "input_mappings": [
                    {
                        "from_step": "generate",
                        "from_field": "result_image_path",
                        "to_field": "input_image_paths",
                        "transform": "as_list",
                    }
                ],
            },
            {
                "id": "square",
                "task_type": "IMAGE_ADJUSTER",
                "config": {"aspect_ratio": 1.0, "mode": "pad"},
                "input_mappings": [
                    {"from_step": "cutout", "from_field": "result_image_paths.0", "to_field": "input_image"}
                ],
            },
        ],
    }
    wf = create(idle_api, body, start=False)
    assert [s["step_id"] for s in wf["steps"]] == ["generate", "cutout", "square"]
    assert steps_of(wf)["square"]["dependencies"] == ["cutout"]


def test_invalid_step_provider_config_names_the_step(idle_api: Api) -> None:
    step = {"id": "g", "task_type": "GENERATION", "config": {"prompt": "p"}}
    step["provider_config"] = {"provider_type": "VERTEX", "image_size": "9K"}
    response = post(idle_api, workflow(step))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "steps", 0, "provider_config", "image_size"]
    assert error["msg"].startswith("step 'g': invalid provider_config for VERTEX")
    assert_nothing_written(idle_api)
