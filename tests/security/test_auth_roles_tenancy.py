"""Authentication, roles and tenancy over every route of the app (enumerated, so new endpoints are covered).

- every non-public route: 401 without a token and with expired, foreign-key, ``alg: none``, wrong-issuer,
  wrong-algorithm, unknown-role and garbage tokens;
- every write route: 403 for a viewer; every admin route: 403 for service and viewer tokens;
- every route that names an object: 404 for another tenant; no read leaks another tenant's ids;
- and after each sweep nothing changed (rows, objects, stored files, LoRA files, deliveries).

A write route without a valid request in ``REQUESTS`` fails the matrix: add one when adding an endpoint.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from httpx import Response

from atelier.core.auth import Role, mint_token
from atelier.settings import AuthSettings
from tests.api.helpers import stored_files, task_count
from tests.conftest import Api, b64_png, data_url, png_bytes
from tests.security import RouteInfo, api_routes, files_under, hit_server, start_app, training_count

PUBLIC = {
    ("GET", "/health"): "liveness probe, documented as open",
    ("GET", "/dashboard"): "redirect to the static dashboard; its data comes from the authenticated Monitoring API",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
READ_LIKE_WRITES = {
    ("POST", "/api/v1/evaluation/"): "evaluation stores nothing; any authenticated role may evaluate (README)",
}
# Routes that name an object but where another tenant's call is not a lookup of the owner's object.
NOT_A_LOOKUP = {
    ("POST", "/api/v1/storage/images/{path:path}"): "an upload writes under the caller's own tenant root "
    "(checked in test_another_tenants_upload_lands_in_its_own_root)",
}


def is_admin_route(route: RouteInfo) -> bool:
    """Admin-only: everything under /api/v1/admin/ and the fleet-wide /metrics (unless metrics.public)."""
    return route.path.startswith("/api/v1/admin/") or route.path == "/metrics"


# ------------------------------------------------------------------------------------------------ world


@dataclass
class World:
    """One app and the acme objects every matrix aims at."""

    api: Api
    task: str
    generation: str
    workflow: str
    finished_workflow: str
    training: str
    task_delivery: str
    workflow_delivery: str
    file: str
    lora: str

    def fill(self, path: str) -> str:
        """The path template with acme's objects put in."""
        values = {
            "{path:path}": self.file,
            "{delivery_id}": self.workflow_delivery if "/workflows/" in path else self.task_delivery,
            "{workflow_id}": self.finished_workflow if path.endswith("/redeliver") else self.workflow,
            "{request_id}": self.task,
            "{id}": self.task,
        }
        if path.startswith("/api/v1/tasks/generation/"):
            values["{task_id}"] = self.generation
        elif path.startswith("/api/v1/training/"):
            values["{task_id}"] = self.training
        else:
            values["{task_id}"] = self.task
        for key, value in values.items():
            path = path.replace(key, value)
        assert "{" not in path, f"no value for a parameter of {path}: extend World.fill"
        return path

    def ids(self) -> list[str]:
        """Identifiers of acme's objects (must never show up in another tenant's responses)."""
        return [self.task, self.generation, self.workflow, self.finished_workflow, self.training, self.file]


def adjuster_task(**extra: Any) -> dict[str, Any]:
    """A valid IMAGE_ADJUSTER create body."""
    return {"task_type": "IMAGE_ADJUSTER", "input_image": data_url((16, 8)), "aspect_ratio": 1, **extra}


def workflow_body(**extra: Any) -> dict[str, Any]:
    """A valid one-step workflow."""
    step = {"id": "a", "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1, "input_image": b64_png((8, 4))}}
    return {"name": "wf", "origin_instance": "tests", "steps": [step], **extra}


def training_body(**extra: Any) -> dict[str, Any]:
    """A valid training create body."""
    return {"trigger_word": "sks", "source_images": [data_url((16, 16))], **extra}


def lora_file(name: str = "sec.bin") -> dict[str, Any]:
    """Multipart fields of a LoRA upload."""
    return {"files": {"file": (name, b"\x00" * 64, "application/octet-stream")}, "data": {"entity_type": "styles"}}


# A valid request per write route (so a refusal is the role or tenant check, not the body's shape).
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/tasks/"): {"json": adjuster_task()},
    ("PUT", "/api/v1/tasks/{task_id}"): {"json": {"priority": 9}},
    ("DELETE", "/api/v1/tasks/{task_id}"): {},
    ("POST", "/api/v1/tasks/{task_id}/cleanup"): {},
    ("POST", "/api/v1/tasks/{task_id}/cancel"): {},
    ("PUT", "/api/v1/tasks/generation/{task_id}"): {"json": {"priority": 9}},
    ("POST", "/api/v1/tasks/generation/{task_id}/cancel"): {},
    ("POST", "/api/v1/storage/images/{path:path}"): {"files": {"file": ("x.png", png_bytes((8, 8)), "image/png")}},
    ("DELETE", "/api/v1/storage/images/{path:path}"): {},
    ("POST", "/api/v1/admin/recovery"): {},
    ("POST", "/api/v1/lora/upload"): lora_file(),
    ("POST", "/api/v1/admin/lora/upload"): lora_file(),
    ("DELETE", "/api/v1/admin/lora"): {"json": {"partial_path": "styles/sec.bin"}},
    ("POST", "/api/v1/training/"): {"json": training_body()},
    ("POST", "/api/v1/training/{task_id}/cancel"): {},
    ("POST", "/api/v1/workflows/"): {"json": workflow_body()},
    ("PATCH", "/api/v1/workflows/{workflow_id}"): {"json": {"name": "renamed"}},
    ("DELETE", "/api/v1/workflows/{workflow_id}"): {},
    ("POST", "/api/v1/workflows/{workflow_id}/start"): {},
    ("POST", "/api/v1/workflows/{workflow_id}/resume"): {},
    ("POST", "/api/v1/workflows/{workflow_id}/cleanup"): {},
    ("POST", "/api/v1/tasks/{task_id}/deliveries/{delivery_id}/redeliver"): {},
    ("POST", "/api/v1/workflows/{workflow_id}/deliveries/{delivery_id}/redeliver"): {},
    ("POST", "/api/v1/evaluation/"): {"json": {"expected_framing": "full_body", "expected_view_angle": "front"}},
}


def call(world: World, route: RouteInfo, headers: dict[str, str]) -> Response:
    """Send ``route`` (acme's objects filled in, its valid request if it has one) with ``headers``."""
    request = REQUESTS.get((route.method, route.path), {})
    response: Response = world.api.client.request(route.method, world.fill(route.path), headers=headers, **request)
    return response


def deliveries(api: Api, kind: str, object_id: str) -> list[dict[str, Any]]:
    response = api.client.get(f"/api/v1/{kind}/{object_id}/deliveries", headers=api.headers())
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["deliveries"]
    return items


def wait_delivered(api: Api, kind: str, object_id: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        items = deliveries(api, kind, object_id)
        if items and all(i["state"] == "DELIVERED" for i in items):
            return str(items[0]["id"])
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with hit_server() as receiver:
        api = start_app(
            tmp_path_factory.mktemp("security-auth") / "data",
            webhooks={"allow_private_networks": ["127.0.0.1"], "poll_interval_seconds": 0.02},
            server={"sse_max_seconds": 2},
        )
        try:
            acme = api.headers()
            hook = receiver.url("/hook")
            task = api.create(adjuster_task(webhook_url=hook))["id"]
            generation = api.create({"task_type": "GENERATION", "prompt": "a red square", "width": 64, "height": 64})
            wf = api.client.post("/api/v1/workflows/", params={"start": False}, json=workflow_body(), headers=acme)
            assert wf.status_code in {200, 201}, wf.text
            done = api.client.post(
                "/api/v1/workflows/", params={"start": False}, json=workflow_body(webhook_url=hook), headers=acme
            )
            assert done.status_code in {200, 201}, done.text
            assert api.client.delete(f"/api/v1/workflows/{done.json()['id']}", headers=acme).status_code == 200
            training = api.client.post("/api/v1/training/", json=training_body(), headers=acme)
            assert training.status_code == 200, training.text
            saved = api.client.post(
                "/api/v1/storage/images/sec/keep.png",
                files={"file": ("keep.png", png_bytes((8, 8)), "image/png")},
                headers=acme,
            )
            assert saved.status_code == 200, saved.text
            lora = api.client.post("/api/v1/lora/upload", headers=acme, **lora_file("keep.bin"))
            assert lora.status_code == 200, lora.text
            yield World(
                api=api,
                task=task,
                generation=generation["id"],
                workflow=wf.json()["id"],
                finished_workflow=done.json()["id"],
                training=training.json()["id"],
                task_delivery=wait_delivered(api, "tasks", task),
                workflow_delivery=wait_delivered(api, "workflows", done.json()["id"]),
                file="sec/keep.png",
                lora=lora.json()["partial_path"],
            )
        finally:
            api.close()


def snapshot(world: World) -> dict[str, Any]:
    """Everything the matrices could have changed, as acme and on disk."""
    api, acme = world.api, world.api.headers()

    def read(path: str, *fields: str) -> dict[str, Any]:
        response = api.client.get(path, headers=acme)
        assert response.status_code == 200, (path, response.text)
        body: dict[str, Any] = response.json()
        return {f: body.get(f) for f in fields}

    return {
        "tasks": task_count(api),
        "trainings": training_count(api),
        "files": stored_files(api),
        "loras": files_under(api.settings.lora_root),
        "lora_bin": files_under(api.settings.lora_bin_root),
        "task": read(f"/api/v1/tasks/{world.task}", "status", "priority", "is_deleted", "cancel_requested"),
        "generation": read(f"/api/v1/tasks/{world.generation}", "status", "priority", "cancel_requested"),
        "workflow": read(f"/api/v1/workflows/{world.workflow}", "status", "name", "is_deleted"),
        "finished": read(f"/api/v1/workflows/{world.finished_workflow}", "status", "name", "is_deleted"),
        "training": read(f"/api/v1/training/{world.training}", "status", "logs"),
        "task_deliveries": [(d["state"], d["attempts"]) for d in deliveries(api, "tasks", world.task)],
        "workflow_deliveries": [
            (d["state"], d["attempts"]) for d in deliveries(api, "workflows", world.finished_workflow)
        ],
    }


def protected_routes(api: Api) -> list[RouteInfo]:
    routes = api_routes(api.client.app)  # type: ignore[arg-type]
    assert len(routes) > 40, routes  # the walk found the included routers
    return [r for r in routes if (r.method, r.path) not in PUBLIC]


# ------------------------------------------------------------------------------------------------ tokens


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(auth: AuthSettings, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "acme:admin", "tenant": "acme", "role": "admin", "iss": auth.issuer, "iat": now}
    return {**claims, "exp": now + 600, "jti": uuid.uuid4().hex, **extra}


def _quiet_encode(claims: dict[str, Any], key: str, algorithm: str) -> str:
    """Sign with ``algorithm`` (PyJWT warns that the development key is short for HS512: irrelevant here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm=algorithm)


BadToken = Callable[[AuthSettings], str | None]
BAD_TOKENS: dict[str, BadToken] = {
    "none": lambda auth: None,
    "expired": lambda auth: mint_token(auth, tenant="acme", role=Role.ADMIN, ttl_seconds=-5),
    "other_key": lambda auth: mint_token(
        auth.model_copy(update={"secret_key": "another-secret-key-of-32-characters-at-least"}),
        tenant="acme",
        role=Role.ADMIN,
    ),
    "alg_none": lambda auth: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(auth))}.",
    "wrong_issuer": lambda auth: mint_token(
        auth.model_copy(update={"issuer": "someone-else"}), tenant="acme", role=Role.ADMIN
    ),
    "no_issuer": lambda auth: jwt.encode(
        {k: v for k, v in _claims(auth).items() if k != "iss"}, auth.secret_key, algorithm=auth.algorithm
    ),
    "other_algorithm": lambda auth: _quiet_encode(_claims(auth), auth.secret_key, "HS512"),
    "unknown_role": lambda auth: jwt.encode(_claims(auth, role="root"), auth.secret_key, algorithm=auth.algorithm),
    "bad_tenant": lambda auth: jwt.encode(_claims(auth, tenant="../x"), auth.secret_key, algorithm=auth.algorithm),
    "garbage": lambda auth: "not.a.jwt",
}


# Every route is tried with these; the other kinds go through the same verification (decode_token), so they are
# tried on one route per authentication dependency (bearer, status surfaces, admin dependency, metrics).
EVERY_ROUTE = {"none", "expired", "other_key", "alg_none", "wrong_issuer"}
SAMPLE = {
    ("GET", "/api/v1/tasks/"),
    ("POST", "/api/v1/tasks/"),
    ("GET", "/v2/status/{request_id}"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/api/v1/admin/lora"),
    ("GET", "/metrics"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_every_protected_route_refuses_bad_credentials_with_401(world: World, kind: str) -> None:
    before = snapshot(world)
    token = BAD_TOKENS[kind](world.api.settings.auth)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    wrong: list[str] = []
    routes = protected_routes(world.api)
    if kind not in EVERY_ROUTE:
        routes = [r for r in routes if (r.method, r.path) in SAMPLE]
        assert len(routes) == len(SAMPLE)
    for route in routes:
        response = call(world, route, headers)
        if response.status_code != 401:
            wrong.append(f"{route.method} {route.path}: {response.status_code} {response.text[:120]}")
        if route.path.startswith("/v2/status/") or route.path.startswith("/v1/jobs/"):
            alt = world.api.client.get(world.fill(route.path), headers={} if token is None else {"api_token": token})
            if alt.status_code != 401:
                wrong.append(f"{route.method} {route.path} (api_token header): {alt.status_code}")
    assert wrong == [], "\n".join(wrong)
    assert snapshot(world) == before


def test_public_routes_are_the_documented_ones(world: World) -> None:
    paths = {(r.method, r.path) for r in api_routes(world.api.client.app)}  # type: ignore[arg-type]
    assert set(PUBLIC) <= paths
    for method, path in PUBLIC:
        assert world.api.client.request(method, path, follow_redirects=False).status_code in {200, 307}


# ------------------------------------------------------------------------------------------------ roles


def test_viewer_is_refused_every_write_with_403(world: World) -> None:
    before = snapshot(world)
    viewer = world.api.headers(role=Role.VIEWER)
    writes = [
        r
        for r in protected_routes(world.api)
        if r.method in WRITE_METHODS and (r.method, r.path) not in READ_LIKE_WRITES
    ]
    missing = [f"{r.method} {r.path}" for r in writes if (r.method, r.path) not in REQUESTS]
    assert missing == [], f"write routes without a valid request in REQUESTS: {missing}"
    wrong = []
    for route in writes:
        response = call(world, route, viewer)
        if response.status_code != 403 or response.json().get("code") != "forbidden":
            wrong.append(f"{route.method} {route.path}: {response.status_code} {response.text[:160]}")
    assert wrong == [], "\n".join(wrong)
    assert snapshot(world) == before


@pytest.mark.parametrize("role", [Role.SERVICE, Role.VIEWER])
def test_non_admins_are_refused_every_admin_route_with_403(world: World, role: Role) -> None:
    before = snapshot(world)
    admin_routes = [r for r in protected_routes(world.api) if is_admin_route(r)]
    assert {(r.method, r.path) for r in admin_routes} >= {
        ("POST", "/api/v1/admin/recovery"),
        ("POST", "/api/v1/admin/lora/upload"),
        ("DELETE", "/api/v1/admin/lora"),
        ("GET", "/metrics"),
    }
    wrong = []
    for route in admin_routes:
        response = call(world, route, world.api.headers(role=role))
        if response.status_code != 403 or response.json().get("code") != "forbidden":
            wrong.append(f"{route.method} {route.path}: {response.status_code} {response.text[:160]}")
    assert wrong == [], "\n".join(wrong)
    assert snapshot(world) == before
    assert world.lora in files_under(world.api.settings.lora_root)


def test_the_admin_routes_do_work_for_an_admin(world: World) -> None:
    """The 403s above are about the role: the same requests succeed with an admin token."""
    admin = world.api.headers(role=Role.ADMIN)
    assert world.api.client.get("/metrics", headers=admin).status_code == 200
    assert world.api.client.post("/api/v1/admin/recovery", headers=admin).status_code == 200


# ------------------------------------------------------------------------------------------------ tenancy


def test_another_tenant_gets_404_for_every_object_route(world: World) -> None:
    before = snapshot(world)
    routes = [
        r
        for r in protected_routes(world.api)
        if "{" in r.path and not is_admin_route(r) and (r.method, r.path) not in NOT_A_LOOKUP
    ]
    assert len(routes) > 25, routes
    wrong = []
    for role in (Role.SERVICE, Role.VIEWER):
        other = world.api.headers("other", role)
        for route in routes:
            if role is Role.VIEWER and route.method in WRITE_METHODS:
                continue  # 403 comes first for viewers; covered above
            response = call(world, route, other)
            asked = world.fill(route.path)  # an error may echo the id it was asked for: that is no leak
            leaked = [i for i in world.ids() if i in response.text and i not in asked]
            if response.status_code != 404 or leaked:
                wrong.append(f"{role} {route.method} {route.path}: {response.status_code} {response.text[:160]}")
    assert wrong == [], "\n".join(wrong)
    assert snapshot(world) == before


def test_no_read_shows_another_tenants_objects(world: World) -> None:
    other = world.api.headers("other")
    lists = [
        r for r in protected_routes(world.api) if r.method == "GET" and "{" not in r.path and not is_admin_route(r)
    ]
    assert len(lists) >= 10, lists
    for route in lists:
        response = world.api.client.get(route.path, headers=other)
        assert response.status_code == 200, (route.path, response.text)
        leaked = [i for i in world.ids() if i in response.text]
        assert leaked == [], (route.path, leaked)
    # the same lists do show them to their owner (the check above can fail)
    mine = world.api.client.get("/api/v1/tasks/", headers=world.api.headers()).text
    assert world.task in mine
    assert world.file in world.api.client.get("/api/v1/storage/images", headers=world.api.headers()).text


def test_another_tenants_upload_lands_in_its_own_root(world: World) -> None:
    before = (world.api.settings.storage_root / "tenants" / "acme" / world.file).read_bytes()
    response = world.api.client.post(
        f"/api/v1/storage/images/{world.file}",
        files={"file": ("x.png", png_bytes((9, 9), "red"), "image/png")},
        headers=world.api.headers("other"),
    )
    assert response.status_code == 200, response.text
    root: Path = world.api.settings.storage_root
    assert (root / "tenants" / "acme" / world.file).read_bytes() == before
    assert (root / "tenants" / "other" / world.file).is_file()
    assert world.api.client.delete(f"/api/v1/storage/images/{world.file}", headers=world.api.headers("other")).json()
    assert (root / "tenants" / "acme" / world.file).read_bytes() == before


def test_an_idempotency_key_never_replays_another_tenants_task(world: World) -> None:
    key = {"Idempotency-Key": f"sec-{uuid.uuid4().hex}"}
    mine = world.api.client.post("/api/v1/tasks/", json=adjuster_task(), headers={**world.api.headers(), **key})
    assert mine.status_code == 200, mine.text
    theirs = world.api.client.post(
        "/api/v1/tasks/", json=adjuster_task(), headers={**world.api.headers("other"), **key}
    )
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.headers.get("Idempotent-Replayed") is None
    assert mine.json()["id"] not in theirs.text
