"""Webhooks end to end: outbox → signed delivery → receiver, with retries, ordering, rotation and restarts."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from atelier.core.db import session_scope
from atelier.delivery import sender
from atelier.delivery.models import WebhookDelivery
from atelier.delivery.signing import derived_secret
from atelier.tasks.models import TaskEvent
from tests.api.helpers import runtime_of
from tests.conftest import Api, AppFactory
from tests.delivery.conftest import FAST, SECRET, ReceiverFactory, WebhookApp
from tests.fakes.server import free_port
from tests.fakes.webhooks import Receiver

GENERATE = {"task_type": "GENERATION", "prompt": "a red dress", "config": {"script": ["ok"]}}


def deliveries(api: Api, task_id: str, tenant: str = "acme") -> list[dict[str, Any]]:
    response = api.client.get(f"/api/v1/tasks/{task_id}/deliveries", headers=api.headers(tenant))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    result: list[dict[str, Any]] = body["deliveries"]
    return result


def wait_deliveries(api: Api, task_id: str, check: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(api, task_id)
        if check(found):
            return found
        assert time.monotonic() < deadline, f"deliveries never matched: {found}"
        time.sleep(0.02)


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event_type"], e["status"]) for e in events]


LIFECYCLE = [
    ("TASK_CREATED", "PENDING"),
    ("TASK_STATUS", "EXECUTING"),
    ("TASK_STATUS", "COMPLETED"),
    ("INFERENCE_STATUS", "COMPLETED"),
]


def test_task_lifecycle_is_delivered_signed_and_in_order(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": receiver.url, "origin_reference": "order-7"})
    done = api.wait(task["id"])
    events = receiver.wait_for(4)
    assert kinds(events) == LIFECYCLE
    verifier = Webhook(SECRET)
    for request in receiver.requests:
        assert verifier.verify(request.body, request.headers) == request.event  # the library accepts our signature
        assert request.headers["content-type"] == "application/json"
    created, executing, completed, inference = events
    assert {e["task_id"] for e in events} == {task["id"]}
    assert created["task_type"] == "GENERATION" and created["created_at"].startswith(task["created_at"][:19])
    assert executing["started_at"] and executing["completed_at"] is None and executing["progress"] == 0.0
    assert completed["progress"] == 100.0 and completed["error_message"] is None and completed["completed_at"]
    assert inference["result_image_path"] == done["result_image_path"]
    sequences = [e["metadata"]["sequence"] for e in events]
    assert sequences == sorted(sequences) and sequences[0] < sequences[1] < sequences[2]
    assert all(e["metadata"]["tenant"] == "acme" and e["metadata"]["origin_reference"] == "order-7" for e in events)

    log = deliveries(api, task["id"])
    assert [(d["event_type"], d["state"], d["attempts"]) for d in log] == [(k, "DELIVERED", 1) for k, _ in LIFECYCLE]
    assert [d["webhook_id"] for d in log] == [r.headers["webhook-id"] for r in receiver.requests]
    first = log[0]["attempt_log"][0]
    assert first["status_code"] == 204 and first["duration_ms"] >= 0 and first["error"] is None
    assert log[0]["payload"] == events[0] and log[0]["next_attempt_at"] is None


def test_a_failing_receiver_gets_every_event_exactly_once(
    webhook_app: WebhookApp, receiver_factory: ReceiverFactory
) -> None:
    receiver = receiver_factory(fail_first=3)
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": receiver.url})
    api.wait(task["id"])
    events = receiver.wait_for(4)
    assert kinds(events) == LIFECYCLE  # the later events waited for the first one: order preserved
    assert receiver.duplicates == 0 and len(receiver.requests) == 4 + 3
    log = wait_deliveries(api, task["id"], lambda found: all(d["state"] == "DELIVERED" for d in found))
    assert [a["status_code"] for a in log[0]["attempt_log"]] == [500, 500, 500, 204]
    assert log[0]["attempts"] == 4 and log[0]["last_status_code"] == 204
    assert all(d["attempts"] == 1 for d in log[1:])
    # every attempt of a delivery carries the same webhook-id (that is what receivers dedupe on)
    first_id = log[0]["webhook_id"]
    assert [r.headers["webhook-id"] for r in receiver.requests[:4]] == [first_id] * 4


def test_rotation_signs_with_every_secret(webhook_app: WebhookApp, receiver: Receiver) -> None:
    new = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
    api = webhook_app(secrets=[SECRET, new])
    api.create({**GENERATE, "webhook_url": receiver.url})
    receiver.wait_for(4)
    request = receiver.requests[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(request.body, request.headers)  # receivers still on the old secret
    assert Webhook(new).verify(request.body, request.headers)  # receivers already on the new one
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "b3RoZXItc2VjcmV0").verify(request.body, request.headers)
    tampered = request.body.replace(b"PENDING", b"EXPIRED")
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(tampered, request.headers)


def test_without_configured_secrets_the_derived_secret_signs(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app(secrets=[])
    api.create({**GENERATE, "webhook_url": receiver.url})
    receiver.wait_for(1)
    request = receiver.requests[0]
    assert Webhook(derived_secret(api.settings.auth.secret_key)).verify(request.body, request.headers)


def test_receiver_down_across_an_api_restart_still_gets_everything(
    app_factory: AppFactory, receiver_factory: ReceiverFactory
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    settings = {"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST}
    first = app_factory(webhooks=settings)
    task = first.create({**GENERATE, "webhook_url": url})
    first.wait(task["id"])
    failed = wait_deliveries(first, task["id"], lambda found: found and found[0]["attempts"] >= 2)
    assert failed[0]["state"] == "PENDING" and "ConnectError" in failed[0]["last_error"]
    assert failed[0]["next_attempt_at"] is not None
    first.close()

    receiver = receiver_factory(port=port)
    second = app_factory(webhooks=settings)  # same data folder: the deliveries are in the database
    events = receiver.wait_for(4)
    assert kinds(events) == LIFECYCLE and receiver.duplicates == 0
    assert all(d["state"] == "DELIVERED" for d in wait_deliveries(second, task["id"], lambda f: len(f) == 4))


def test_410_gone_stops_and_the_window_gives_up(webhook_app: WebhookApp, receiver_factory: ReceiverFactory) -> None:
    gone = receiver_factory(always=410)
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": gone.url})
    api.wait(task["id"])
    log = wait_deliveries(api, task["id"], lambda found: found and found[0]["state"] == "FAILED")
    assert log[0]["attempts"] == 1 and log[0]["last_status_code"] == 410
    api.close()

    broken = receiver_factory(always=500)
    short = webhook_app(retry_window_seconds=0.3)
    task = short.create({**GENERATE, "webhook_url": broken.url})
    log = wait_deliveries(short, task["id"], lambda found: found and found[0]["state"] == "FAILED")
    assert 1 < log[0]["attempts"] == len(log[0]["attempt_log"])
    assert {a["status_code"] for a in log[0]["attempt_log"]} == {500}


def test_redeliver_sends_the_same_message_again(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": receiver.url})
    receiver.wait_for(4)
    log = wait_deliveries(api, task["id"], lambda found: len(found) == 4)
    url = f"/api/v1/tasks/{task['id']}/deliveries/{log[1]['id']}/redeliver"
    assert api.client.post(url, headers=api.headers("globex")).status_code == 404
    response = api.client.post(url, headers=api.headers())
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "PENDING"
    again = wait_deliveries(
        api, task["id"], lambda found: found[1]["attempts"] == 2 and found[1]["state"] == "DELIVERED"
    )
    assert receiver.duplicates == 1  # the receiver recognised it by its webhook-id
    assert receiver.requests[-1].headers["webhook-id"] == again[1]["webhook_id"]
    missing = f"/api/v1/tasks/{task['id']}/deliveries/999999/redeliver"
    assert api.client.post(missing, headers=api.headers()).status_code == 404


def test_delivery_log_is_tenant_scoped_and_filterable(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": receiver.url})
    receiver.wait_for(4)
    assert api.client.get(f"/api/v1/tasks/{task['id']}/deliveries", headers=api.headers("globex")).status_code == 404
    page = api.client.get(
        f"/api/v1/tasks/{task['id']}/deliveries?state=DELIVERED&limit=2&skip=1", headers=api.headers()
    ).json()
    assert page["total"] == 4 and len(page["deliveries"]) == 2 and page["skip"] == 1
    bad = api.client.get(f"/api/v1/tasks/{task['id']}/deliveries?state=LOST", headers=api.headers())
    assert bad.status_code == 422


def test_unsafe_webhook_urls_are_refused_before_anything_is_written(app_factory: AppFactory) -> None:
    api = app_factory(worker=False)  # no allow-list: loopback and private hosts are refused
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://localhost/x", "http://[::1]/h"):
        response = api.client.post("/api/v1/tasks/", json={**GENERATE, "webhook_url": url}, headers=api.headers())
        assert response.status_code == 422, url
        assert response.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    listed = api.client.get("/api/v1/tasks/", headers=api.headers()).json()
    assert listed == [] or listed.get("tasks", listed) == []


def test_tasks_without_webhook_leave_no_outbox_work(api: Api) -> None:
    task = api.create(GENERATE)
    api.wait(task["id"])
    with session_scope(runtime_of(api).sessions) as session:
        flagged = session.scalars(select(TaskEvent).where(TaskEvent.webhook_pending.is_(True))).all()
        made = session.scalars(select(WebhookDelivery)).all()
    assert flagged == [] and made == []
    assert deliveries(api, task["id"]) == []


def test_failed_task_reports_its_error(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app()
    task = api.create({**GENERATE, "config": {"script": ["value"]}, "webhook_url": receiver.url})
    assert api.wait(task["id"])["status"] == "FAILED"
    events = receiver.wait_for(4)
    assert kinds(events)[-2:] == [("TASK_STATUS", "FAILED"), ("INFERENCE_STATUS", "FAILED")]
    assert events[-2]["error_category"] == "INVALID_INPUT" and "not acceptable" in events[-2]["error_message"]
    assert events[-1]["result_image_path"] is None and events[-1]["error_message"] == events[-2]["error_message"]
    uuid.UUID(events[-1]["task_id"])


def test_an_unexpected_sender_failure_is_recorded_and_retried(
    webhook_app: WebhookApp, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_post = sender.post
    failures = iter([True])

    def flaky(*args: Any) -> sender.AttemptResult:
        if next(failures, False):
            raise RuntimeError("signing exploded")
        return real_post(*args)

    monkeypatch.setattr(sender, "post", flaky)
    api = webhook_app()
    task = api.create({**GENERATE, "webhook_url": receiver.url})
    assert kinds(receiver.wait_for(4)) == LIFECYCLE
    log = wait_deliveries(api, task["id"], lambda found: all(d["state"] == "DELIVERED" for d in found))
    first = log[0]["attempt_log"]
    assert first[0]["error"] == "RuntimeError: signing exploded" and first[0]["status_code"] is None
    assert first[1]["status_code"] == 204
