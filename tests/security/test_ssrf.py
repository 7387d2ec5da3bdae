"""SSRF: webhook URLs and image URLs that point at internal addresses, in every notation, directly, through
redirects and through DNS names.

At create, URLs are checked without DNS: literal internal addresses (any notation) and internal host names are a
422 and nothing is written. When a URL is fetched (task inputs, training sources, evaluation images, webhook
deliveries) it is checked again with DNS and per redirect hop: a name or a redirect that leads inside fails the
task/training (or the delivery) with a clear error, and the internal target never sees a request.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from atelier.core.auth import Role
from tests.api.helpers import assert_422, stored_files, task_count
from tests.conftest import Api, data_url
from tests.security import HitServer, hit_server, start_app, training_count

ALLOWED_HOST = "127.0.0.2"  # the allow-listed "internal service" of the fetch-time tests
PRIVATE_NAME = "images.private-dns.test"  # resolves to 127.0.0.1 while the fetch-time tests run


def internal_urls(port: int) -> dict[str, str]:
    """URLs that must be refused at create; the loopback ones aim at a live server on ``port``."""
    return {
        "loopback": f"http://127.0.0.1:{port}/img.png",
        "loopback_other": f"http://127.1.2.3:{port}/img.png",
        "loopback_v6": f"http://[::1]:{port}/img.png",
        "ten": "http://10.0.0.1/img.png",
        "one_seven_two": "http://172.16.0.1/img.png",
        "one_seven_two_top": "http://172.31.255.254/img.png",
        "one_nine_two": "http://192.168.1.1/img.png",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "link_local_other": "http://169.254.0.1/img.png",
        "unspecified": f"http://0.0.0.0:{port}/img.png",
        "unspecified_v6": f"http://[::]:{port}/img.png",
        "cgnat": "http://100.64.0.1/img.png",
        "mapped_v6": f"http://[::ffff:127.0.0.1]:{port}/img.png",
        "mapped_v6_metadata": "http://[::ffff:169.254.169.254]/latest/",
        "mapped_v6_hex": f"http://[::ffff:7f00:1]:{port}/img.png",
        "sixtofour": f"http://[2002:7f00:1::1]:{port}/img.png",
        "unique_local_v6": "http://[fd00::1]/img.png",
        "link_local_v6": "http://[fe80::1]/img.png",
        "decimal": f"http://2130706433:{port}/img.png",
        "hex": f"http://0x7f000001:{port}/img.png",
        "hex_dotted": f"http://0x7f.0x0.0x0.0x1:{port}/img.png",
        "octal": f"http://0177.0.0.1:{port}/img.png",
        "short": f"http://127.1:{port}/img.png",
        "decimal_metadata": "http://2852039166/latest/",
        "localhost": f"http://localhost:{port}/img.png",
        "localhost_upper_dot": f"http://LOCALHOST.:{port}/img.png",
        "sub_localhost": f"http://api.localhost:{port}/img.png",
        "internal_name": "http://metadata.google.internal/computeMetadata/v1/",
        "mdns_name": "http://printer.local/img.png",
        "credentials": "https://user:secret@images.example.com/img.png",
        "file_scheme": "file:///etc/passwd",
        "gopher_scheme": f"gopher://127.0.0.1:{port}/_x",
    }


# --------------------------------------------------------------------------------------------- create time


@pytest.fixture(scope="module")
def target() -> Iterator[HitServer]:
    with hit_server() as server:
        yield server


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = start_app(tmp_path_factory.mktemp("security-ssrf") / "data", server={"sse_max_seconds": 2})
    try:
        yield api
    finally:
        api.close()


def _task_input(url: str) -> dict[str, Any]:
    return {"task_type": "IMAGE_ADJUSTER", "input_image": url, "aspect_ratio": 1}


def _workflow(**extra: Any) -> dict[str, Any]:
    step = {"id": "a", "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1, "input_image": data_url((8, 8))}}
    return {"name": "wf", "origin_instance": "tests", "steps": [step], **extra}


def _training(**extra: Any) -> dict[str, Any]:
    return {"trigger_word": "sks", "source_images": [data_url((16, 16))], **extra}


# (method, path, body for a URL, loc parts of the refusal)
Case = tuple[str, str, Callable[[str], dict[str, Any]], tuple[Any, ...]]
CREATE_CASES: dict[str, Case] = {
    "task_webhook": (
        "POST",
        "/api/v1/tasks/",
        lambda u: {**_task_input(data_url((8, 8))), "webhook_url": u},
        ("body", "webhook_url"),
    ),
    "workflow_webhook": ("POST", "/api/v1/workflows/", lambda u: _workflow(webhook_url=u), ("body", "webhook_url")),
    "training_webhook": ("POST", "/api/v1/training/", lambda u: _training(webhook_url=u), ("body", "webhook_url")),
    "task_image": ("POST", "/api/v1/tasks/", _task_input, ("body", "input_image")),
    "task_image_list": (
        "POST",
        "/api/v1/tasks/",
        lambda u: {"task_type": "BACKGROUND_REMOVAL", "input_image_paths": [data_url((8, 8)), u]},
        ("body", "input_image_paths", 1),
    ),
    "training_source": (
        "POST",
        "/api/v1/training/",
        lambda u: {"trigger_word": "sks", "source_images": [data_url((16, 16)), u]},
        ("body", "source_images", 1),
    ),
    "evaluation_image": (
        "POST",
        "/api/v1/evaluation/",
        lambda u: {"expected_framing": "full_body", "expected_view_angle": "front", "image_url": u},
        ("body", "image_url"),
    ),
}


@pytest.mark.parametrize("case", sorted(CREATE_CASES))
def test_internal_urls_are_refused_at_create_with_422(idle: Api, target: HitServer, case: str) -> None:
    method, path, make, loc = CREATE_CASES[case]
    before = (task_count(idle), training_count(idle), stored_files(idle))
    target.reset()
    wrong = []
    for name, url in internal_urls(target.port).items():
        response = idle.client.request(method, path, json=make(url), headers=idle.headers())
        try:
            assert_422(response, *loc)
        except AssertionError:
            wrong.append(f"{name} ({url}): {response.status_code} {response.text[:160]}")
    assert wrong == [], "\n".join(wrong)
    assert (task_count(idle), training_count(idle), stored_files(idle)) == before
    assert target.count() == 0


def test_a_workflow_webhook_cannot_be_patched_to_an_internal_url(idle: Api, target: HitServer) -> None:
    created = idle.client.post("/api/v1/workflows/", params={"start": False}, json=_workflow(), headers=idle.headers())
    assert created.status_code == 200, created.text
    workflow_id = created.json()["id"]
    for name, url in internal_urls(target.port).items():
        response = idle.client.patch(
            f"/api/v1/workflows/{workflow_id}", json={"webhook_url": url}, headers=idle.headers()
        )
        assert response.status_code == 422, (name, response.text)
    stored = idle.client.get(f"/api/v1/workflows/{workflow_id}", headers=idle.headers()).json()
    assert stored["webhook_url"] is None
    assert target.count() == 0


@pytest.mark.parametrize("field", ["input_image", "webhook_url"])
def test_a_workflow_step_with_an_internal_url_fails_at_start(idle: Api, target: HitServer, field: str) -> None:
    """Step inputs are checked when the step's task is created (a step may be fed by another step's output):
    the workflow is accepted, the step fails at once with the reason, and no task row is written."""
    tasks = task_count(idle)
    target.reset()
    step: dict[str, Any] = {"id": "a", "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1}}
    step["config"]["input_image"] = data_url((8, 8))
    step["config"][field] = target.url("/img.png")
    body = {"name": "wf", "origin_instance": "tests", "suppress_subtask_events": False, "steps": [step]}
    response = idle.client.post("/api/v1/workflows/", json=body, headers=idle.headers())
    assert response.status_code == 200, response.text
    workflow = response.json()
    assert workflow["status"] == "FAILED", workflow
    assert "could not start: address 127.0.0.1 is private or reserved" in workflow["error_message"]
    assert workflow["steps"][0]["task_id"] is None
    assert task_count(idle) == tasks
    assert target.count() == 0


def test_a_public_url_is_accepted_at_create(idle: Api) -> None:
    """The refusals above are about the address: the same bodies with a public URL pass (no DNS at create)."""
    url = "https://images.example.com/a.png"
    for case in ("task_webhook", "workflow_webhook", "training_webhook", "task_image", "training_source"):
        method, path, make, _loc = CREATE_CASES[case]
        body = make(url)
        params = {"start": False} if path == "/api/v1/workflows/" else {}
        response = idle.client.request(method, path, json=body, params=params, headers=idle.headers())
        assert response.status_code == 200, (case, response.text)


# --------------------------------------------------------------------------------------------- fetch time


@pytest.fixture(scope="module")
def inside() -> Iterator[HitServer]:
    """The internal target: on 127.0.0.1, which is not allow-listed."""
    with hit_server() as server:
        yield server


@pytest.fixture(scope="module")
def allowed() -> Iterator[HitServer]:
    """An allow-listed internal service (127.0.0.2) that redirects inside on demand."""
    with hit_server(ALLOWED_HOST) as server:
        yield server


@pytest.fixture(scope="module")
def private_dns(inside: HitServer) -> Iterator[None]:
    """``PRIVATE_NAME`` (and ``hooks.`` + it) resolve to 127.0.0.1 in this process (workers are threads)."""
    real = socket.getaddrinfo

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str | bytes) and (host.decode() if isinstance(host, bytes) else host).endswith(
            PRIVATE_NAME
        ):
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", fake)
        yield


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, private_dns: None) -> Iterator[Api]:
    api = start_app(
        tmp_path_factory.mktemp("security-ssrf-run") / "data",
        worker=True,
        inputs={"allow_private_networks": [f"{ALLOWED_HOST}/32"], "fetch_timeout_seconds": 5},
        webhooks={
            "allow_private_networks": [f"{ALLOWED_HOST}/32"],
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
            "poll_interval_seconds": 0.02,
            "retry_window_seconds": 1,
        },
    )
    try:
        yield api
    finally:
        api.close()


def _wait_task(api: Api, task_id: str) -> dict[str, Any]:
    return api.wait(task_id, timeout=30)


def _wait_training(api: Api, training_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        training: dict[str, Any] = api.client.get(f"/api/v1/training/{training_id}", headers=api.headers()).json()
        if training["status"] in {"COMPLETED", "FAILED", "CANCELLED"}:
            return training
        assert time.monotonic() < deadline, training
        time.sleep(0.05)


def _redirect_targets(inside: HitServer) -> dict[str, str]:
    return {
        "loopback": inside.url("/img.png"),
        "localhost": inside.url("/img.png", host="localhost"),
        "mapped_v6": inside.url("/img.png", host="[::ffff:127.0.0.1]"),
        "decimal": inside.url("/img.png", host="2130706433"),
        "private_dns": inside.url("/img.png", host=PRIVATE_NAME),
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "file": "file:///etc/passwd",
    }


def test_an_allow_listed_source_is_fetched(running: Api, allowed: HitServer) -> None:
    """Control: the fetch path works, so the failures below are the policy's doing."""
    allowed.redirects["/hop-ok"] = allowed.url("/img.png")
    task = running.create(_task_input(allowed.url("/hop-ok")))
    assert _wait_task(running, task["id"])["status"] == "COMPLETED"


@pytest.mark.parametrize("kind", ["loopback", "localhost", "mapped_v6", "decimal", "private_dns", "metadata", "file"])
def test_a_redirect_inside_fails_the_task_and_fetches_nothing(
    running: Api, allowed: HitServer, inside: HitServer, kind: str
) -> None:
    inside.reset()
    allowed.redirects[f"/hop-{kind}"] = _redirect_targets(inside)[kind]
    task = running.create(_task_input(allowed.url(f"/hop-{kind}")))
    done = _wait_task(running, task["id"])
    assert done["status"] == "FAILED" and done["error_category"] == "INVALID_INPUT", done
    errors = json.dumps(done["errors"])
    assert any(word in errors for word in ("private", "not allowed", "reserved")), errors
    assert inside.count() == 0
    assert ("GET", f"/hop-{kind}") in allowed.hits


def test_a_name_that_resolves_inside_fails_the_task_and_fetches_nothing(running: Api, inside: HitServer) -> None:
    inside.reset()
    task = running.create(_task_input(inside.url("/img.png", host=PRIVATE_NAME)))  # no DNS at create: accepted
    done = _wait_task(running, task["id"])
    assert done["status"] == "FAILED" and done["error_category"] == "INVALID_INPUT", done
    assert "resolves to private address 127.0.0.1" in json.dumps(done["errors"])
    assert inside.count() == 0


def test_a_training_source_that_leads_inside_fails_the_training(
    running: Api, allowed: HitServer, inside: HitServer
) -> None:
    inside.reset()
    allowed.redirects["/train-hop"] = inside.url("/img.png")
    for source in (inside.url("/img.png", host=PRIVATE_NAME), allowed.url("/train-hop")):
        created = running.client.post(
            "/api/v1/training/", json=_training(source_images=[source]), headers=running.headers()
        )
        assert created.status_code == 200, created.text
        done = _wait_training(running, created.json()["id"])
        assert done["status"] == "FAILED", done
        assert "private" in (done["error_message"] or ""), done["error_message"]
    assert inside.count() == 0


@pytest.mark.parametrize("kind", ["private_dns", "redirect"])
def test_an_evaluation_image_that_leads_inside_is_422(
    running: Api, allowed: HitServer, inside: HitServer, kind: str
) -> None:
    inside.reset()
    allowed.redirects["/eval-hop"] = inside.url("/img.png")
    url = inside.url("/img.png", host=PRIVATE_NAME) if kind == "private_dns" else allowed.url("/eval-hop")
    body = {"expected_framing": "full_body", "expected_view_angle": "front", "image_url": url}
    response = running.client.post("/api/v1/evaluation/", json=body, headers=running.headers(role=Role.VIEWER))
    error = assert_422(response, "body", "image_url")["detail"][0]
    assert error["type"] == "unsafe_url" and "private" in error["msg"], error
    assert inside.count() == 0


def _delivery_settled(api: Api, task_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        response = api.client.get(f"/api/v1/tasks/{task_id}/deliveries", headers=api.headers())
        items: list[dict[str, Any]] = response.json()["deliveries"]
        if items and all(i["state"] != "PENDING" for i in items):
            return items
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


def test_a_webhook_whose_name_resolves_inside_is_never_sent(running: Api, inside: HitServer) -> None:
    inside.reset()
    hook = inside.url("/hook", host="hooks." + PRIVATE_NAME)
    task = running.create({**_task_input(data_url((8, 8))), "webhook_url": hook})  # no DNS at create: accepted
    _wait_task(running, task["id"])
    items = _delivery_settled(running, task["id"])
    assert {i["state"] for i in items} == {"FAILED"}, items
    assert all("private" in (i["last_error"] or "") for i in items), items
    assert inside.count() == 0


def test_a_webhook_redirect_is_not_followed(running: Api, allowed: HitServer, inside: HitServer) -> None:
    inside.reset()
    allowed.redirects["/hook-hop"] = inside.url("/hook")
    task = running.create({**_task_input(data_url((8, 8))), "webhook_url": allowed.url("/hook-hop")})
    _wait_task(running, task["id"])
    items = _delivery_settled(running, task["id"])
    assert {i["state"] for i in items} == {"FAILED"}, items
    assert ("POST", "/hook-hop") in allowed.hits
    assert inside.count() == 0
