"""Schemathesis against the app's own OpenAPI document, every operation, in-process (ASGI).

Three runs over every operation of the document:

- ``test_every_operation_conforms``: a valid service token of tenant A, schema-valid and schema-invalid data
  (positive and negative generation): no server error, no undocumented status, no body, header or content type
  that contradicts the declared responses (the admin-only operations again with an admin token).
- ``test_bad_credentials_are_refused``: no token, an expired one, one signed with another key, an ``alg: none``
  one, one with an unknown role and garbage: 401 on every operation except ``GET /health`` (the only public one;
  the dashboard's static files are not in the document, ``/metrics`` needs an admin token by default).
- ``test_other_tenants_ids_are_not_found``: tenant B's token on tenant A's ids (task, workflow, training, stored
  file, status request id): 404 on every operation with an id in its path, never 200 and never 5xx; tenant A's
  own safe reads of the same ids answer 2xx with bodies that match the schema.

The app is the embedded one the tests build (``make_settings`` + migrations + ``create_app`` with the scripted
providers), without a worker (tasks stay PENDING), webhook loop or reaper, built once for the module: one app per
operation would cost more than the fuzzing. Schemathesis runs its lifespan (``from_asgi``).
Bounded waits instead of exclusions: ``Prefer: wait=N`` waits at most 1 s (``max_sync_wait_seconds``), an SSE
stream of ``/events`` closes after 0.5 s (``sse_max_seconds``); nothing is excluded.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case as _Case
from schemathesis import CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import ServerError
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from atelier.app import create_app
from atelier.core.auth import Role, mint_token
from atelier.core.migrate import upgrade
from atelier.settings import Settings
from tests.conftest import Api, data_url, make_settings, png_bytes, scripted_registry

TENANT_A = "fuzz-a"
TENANT_B = "fuzz-b"

# Few examples per operation: the point is every operation and every status it can give, not depth; the whole
# module stays well under 90 s on two busy cores.
FUZZ = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
FEW = settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
# Seven credentials per case: one generated request per operation is enough to see the token checked first.
ONCE = settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


@dataclass(frozen=True)
class FuzzApp:
    """The app under test, its settings and the ids tenant A owns."""

    app: Any
    settings: Settings
    ids: dict[str, str]

    def bearer(self, tenant: str = TENANT_A, role: Role = Role.SERVICE) -> dict[str, str]:
        """Authorization header of a valid token."""
        return {"Authorization": f"Bearer {mint_token(self.settings.auth, tenant=tenant, role=role)}"}


def _seed(client: Any, headers: dict[str, str]) -> dict[str, str]:
    """Tenant A's task, workflow, training and stored file; the path parameters that address them."""
    task = client.post(
        "/api/v1/tasks/",
        json={"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": "4:5", "mode": "pad"},
        headers=headers,
    )
    assert task.status_code == 200, task.text
    generation = client.post("/api/v1/tasks/", json={"task_type": "GENERATION", "prompt": "a shirt"}, headers=headers)
    assert generation.status_code == 200, generation.text
    step = {"id": "root", "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1, "input_image": data_url()}}
    workflow = client.post(
        "/api/v1/workflows/", json={"name": "wf", "origin_instance": "fuzz", "steps": [step]}, headers=headers
    )
    assert workflow.status_code == 200, workflow.text
    training = client.post(
        "/api/v1/training/", json={"trigger_word": "sks", "source_images": [data_url((48, 36))]}, headers=headers
    )
    assert training.status_code == 200, training.text
    stored = client.post(
        "/api/v1/storage/images/fuzz/owned.png",
        files={"file": ("owned.png", png_bytes(), "image/png")},
        headers=headers,
    )
    assert stored.status_code == 200, stored.text
    return {
        "task_id": task.json()["id"],
        "request_id": task.json()["request_id"],
        "id": task.json()["id"],
        "generation_id": generation.json()["id"],
        "workflow_id": workflow.json()["id"],
        "training_id": training.json()["id"],
        "path": "fuzz/owned.png",
    }


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzApp]:
    """One embedded app without a worker, with tenant A's objects, run by schemathesis' ASGI client."""
    data: Path = tmp_path_factory.mktemp("fuzz") / "data"
    app_settings = make_settings(
        data,
        broker={"embedded_worker": False, "embedded_concurrency": 1},
        webhooks={"enabled": False},
        reaper={"enabled": False},
        server={"max_sync_wait_seconds": 1, "sse_max_seconds": 0.5},
    )
    upgrade(app_settings.database_url)
    app = create_app(app_settings, providers=scripted_registry())
    headers = {"Authorization": f"Bearer {mint_token(app_settings.auth, tenant=TENANT_A, role=Role.SERVICE)}"}
    try:
        with asgi.get_client(cast(Any, app)) as client:
            ids = _seed(client, headers)
        yield FuzzApp(app, app_settings, ids)
    finally:
        asgi.shutdown_lifespans()


def _document() -> dict[str, Any]:
    """The OpenAPI document; ``create_app`` connects nothing and writes nothing (the lifespan does)."""
    doc: dict[str, Any] = create_app(make_settings(Path("unused-fuzz-data"))).openapi()
    return doc


# Loaded at import so that pytest collects one test per operation. Requests go to the module's app (``app=``).
api = schemathesis.openapi.from_dict(_document())
positive = schemathesis.openapi.from_dict(_document())
positive.config.generation.update(modes=[GenerationMode.POSITIVE])
for _schema in (api, positive):
    # The coverage phase (boundary cases, hundreds per operation) is too long for every test run; README shows the
    # command that runs it against a live server.
    _schema.config.phases.coverage.enabled = False

Case = _Case[Any]


def _set_headers(case: Case, headers: dict[str, str], drop: tuple[str, ...] = ()) -> None:
    """Replace the case's credentials (and the ``drop`` headers) with ``headers``."""
    for name in ("authorization", *drop):
        case.headers.pop(name, None)
    case.headers.update(headers)


# 5xx that are the documented answer of this configuration, not a fault: the evaluation backends that call remote
# vision LLMs (vertex, anthropic, …) have no credentials here, and the API says so with 503.
EXPECTED_UNAVAILABLE = {("POST", "/api/v1/evaluation/"): {"evaluation_backend_unavailable"}}


def no_server_error(ctx: CheckContext, response: schemathesis.Response, case: Case) -> bool | None:
    """``not_a_server_error``, except a 503 that the operation documents for a backend this test lacks."""
    allowed = EXPECTED_UNAVAILABLE.get((case.method.upper(), case.path), set())
    if response.status_code == 503 and allowed:
        body = json.loads(response.text)
        if body.get("code") in allowed:
            return True
        raise ServerError(operation=case.operation.label, status_code=503)
    return not_a_server_error(ctx, response, case)


# Not ``negative_data_rejection``: FastAPI takes the last of a repeated scalar query parameter
# (``?origin_zone=a&origin_zone=b``) and pydantic reads a number as a Unix time for a ``date-time`` parameter
# (``?created_before=0.5``). Both are lenient parsing answered with a correct, schema-true 2xx, so that check is
# left out; invalid data is still generated (negative mode) and must give no 5xx and only declared responses.
CONFORMANCE = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@api.parametrize()
@FUZZ
def test_every_operation_conforms(case: Case, fuzz_app: FuzzApp) -> None:
    """Valid token, valid and invalid data: nothing the schema does not declare, no server error."""
    _set_headers(case, fuzz_app.bearer())
    case.call_and_validate(checks=CONFORMANCE, app=fuzz_app.app)


@api.include(path_regex="^/(metrics|api/v1/admin/)").parametrize()
@FEW
def test_admin_operations_conform(case: Case, fuzz_app: FuzzApp) -> None:
    """The admin-only operations, with an admin token (the service token above only sees their 403)."""
    _set_headers(case, fuzz_app.bearer(role=Role.ADMIN))
    case.call_and_validate(checks=CONFORMANCE, app=fuzz_app.app)


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def bad_credentials(app_settings: Settings) -> dict[str, dict[str, str]]:
    """Headers that must never authenticate."""
    auth = app_settings.auth
    now = int(time.time())
    claims = {"sub": "x", "tenant": TENANT_A, "role": "admin", "iss": auth.issuer, "iat": now, "exp": now + 600}
    other_key = auth.model_copy(update={"secret_key": "another-key-" + "x" * 40})
    return {
        "none": {},
        "expired": {"Authorization": f"Bearer {mint_token(auth, tenant=TENANT_A, role=Role.ADMIN, ttl_seconds=-60)}"},
        "other key": {"Authorization": f"Bearer {mint_token(other_key, tenant=TENANT_A, role=Role.ADMIN)}"},
        "alg none": {"Authorization": f"Bearer {_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."},
        "unknown role": {
            "Authorization": "Bearer "
            + mint_token(auth, tenant=TENANT_A, role=Role.ADMIN).split(".")[0]
            + "."
            + _b64({**claims, "role": "root"})
            + ".c2ln"
        },
        "garbage": {"Authorization": "Bearer not-a-jwt"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    }


PUBLIC = {("GET", "/health")}


@positive.parametrize()
@ONCE
def test_bad_credentials_are_refused(case: Case, fuzz_app: FuzzApp) -> None:
    """Every protected operation answers 401 (in its surface's documented envelope) to every bad credential."""
    public = (case.method.upper(), case.path) in PUBLIC
    for name, headers in bad_credentials(fuzz_app.settings).items():
        _set_headers(case, headers)
        response = case.call(app=fuzz_app.app)
        if public:
            assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:200]}"
        else:
            assert response.status_code == 401, f"{name}: {response.status_code} {response.text[:200]}"
        case.validate_response(response, checks=CONFORMANCE)


def _owned_path_parameters(case: Case, ids: dict[str, str]) -> dict[str, str] | None:
    """Tenant A's ids for the operation's path parameters (a training's id for the training routes)."""
    names = set(case.path_parameters or {})
    if not names:
        return None
    chosen: dict[str, str] = {}
    for name in names:
        if name == "task_id" and case.path.startswith("/api/v1/training/"):
            chosen[name] = ids["training_id"]
        elif name == "task_id" and case.path.startswith("/api/v1/tasks/generation/"):
            chosen[name] = ids["generation_id"]
        elif name == "delivery_id":
            chosen[name] = str(uuid.uuid4())  # the parent id decides: unknown for B either way
        else:
            chosen[name] = ids[name]
    return chosen


@positive.parametrize()
@FEW
def test_other_tenants_ids_are_not_found(case: Case, fuzz_app: FuzzApp) -> None:
    """Tenant B on tenant A's ids: 404, never 200 or 5xx. Tenant A's own reads of them: 2xx, schema-true."""
    owned = _owned_path_parameters(case, fuzz_app.ids)
    if owned is None:
        return  # no id in the path: lists and creates are scoped by the token (tests/api cover them)
    case.path_parameters = owned
    _set_headers(case, fuzz_app.bearer(TENANT_B), drop=("api_token",))
    response = case.call(app=fuzz_app.app)
    case.validate_response(response, checks=CONFORMANCE)
    if response.status_code != 422:  # a body or query refused before the lookup says nothing about the id
        assert response.status_code == 404, f"{response.status_code} {response.text[:300]}"
    if case.method.upper() in ("GET", "HEAD"):
        _set_headers(case, fuzz_app.bearer(TENANT_A))
        mine = case.call(app=fuzz_app.app)
        case.validate_response(mine, checks=CONFORMANCE)
        if mine.status_code != 422:
            assert 200 <= mine.status_code < 300, f"{mine.status_code} {mine.text[:300]}"


# ------------------------------------------------------------------------ regressions of what the fuzzing found

HUGE = [2**63, 2**64, 10**30]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/tasks/?skip={}",
        "/api/v1/tasks/generation?skip={}",
        "/api/v1/training/?skip={}",
        "/api/v1/workflows/?skip={}",
        "/api/v1/monitoring/tasks?page={}",
        "/api/v1/monitoring/workflows?page={}",
        # Fixed unknown ids: test ids must not change between collections (pytest-xdist compares them).
        "/api/v1/tasks/5f0c2a9e-0000-4000-8000-000000000001/deliveries?skip={}",
        "/api/v1/workflows/5f0c2a9e-0000-4000-8000-000000000002/deliveries?skip={}",
    ],
)
def test_huge_offsets_are_refused_not_a_server_error(idle_api: Api, url: str) -> None:
    """An offset past a 64-bit integer overflowed the database driver: 500 (SQLite OverflowError)."""
    for value in HUGE:
        response = idle_api.client.get(url.format(value), headers=idle_api.headers(role=Role.ADMIN))
        assert response.status_code == 422, response.text
    largest = url.format(2**31 - 1)
    assert idle_api.client.get(largest, headers=idle_api.headers(role=Role.ADMIN)).status_code in (200, 404)


def test_declared_responses_match_what_the_endpoints_send() -> None:
    """Schemas that lied: image bytes declared as JSON, Prometheus text as JSON, SSE events as plain strings,
    and no error response (401/403/404/…) declared at all, nor the status surfaces' own error envelope."""
    paths = _document()["paths"]
    image = paths["/api/v1/storage/images/{path}"]
    assert list(image["get"]["responses"]["200"]["content"]) == ["image/*"]
    assert "content" not in image["head"]["responses"]["200"]
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    events = paths["/api/v1/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert events["schema"]["properties"]["data"]["type"] == "string"
    for path, item in paths.items():
        for method, operation in item.items():
            if (method.upper(), path) not in PUBLIC:
                assert {"401", "403", "503"} <= operation["responses"].keys(), (method, path)
    bria_401 = paths["/v2/status/{request_id}"]["get"]["responses"]["401"]["content"]["application/json"]["schema"]
    assert bria_401["required"] == ["error", "request_id"]
    jobs_422 = paths["/v1/jobs/{id}"]["get"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert jobs_422["required"] == ["error", "message", "request_id"]
