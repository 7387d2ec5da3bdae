"""A workflow's webhook_url hears its outcome; step task events go there only when not suppressed."""

from __future__ import annotations

import time
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.conftest import Api
from tests.delivery.conftest import SECRET, ReceiverFactory, WebhookApp
from tests.engine.test_workflows_e2e import BASE, create, generate, steps_of, wait_end
from tests.fakes.webhooks import Receiver


def workflow_deliveries(api: Api, workflow_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        response = api.client.get(f"{BASE}{workflow_id}/deliveries", headers=api.headers())
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["deliveries"]
        if len(found) >= count and all(d["state"] == "DELIVERED" for d in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.02)


def test_workflow_outcome_is_delivered_and_step_events_suppressed(webhook_app: WebhookApp, receiver: Receiver) -> None:
    api = webhook_app()
    created = create(api, generate("a", ["ok"]), generate("b", ["ok"], "a"), webhook_url=receiver.url)
    assert wait_end(api, created["id"])["status"] == "COMPLETED"
    (event,) = receiver.wait_for(1)
    time.sleep(0.3)  # nothing else arrives: step events are suppressed by default
    assert len(receiver.events()) == 1
    assert Webhook(SECRET).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert event["event_type"] == "WORKFLOW_STATUS" and event["status"] == "COMPLETED"
    assert event["workflow_id"] == event["task_id"] == created["id"]
    assert (event["completed_steps"], event["total_steps"]) == (2, 2)
    assert event["final_step_result"]["result_image_path"]
    log = workflow_deliveries(api, created["id"], 1)
    assert log[0]["webhook_id"] == receiver.requests[0].headers["webhook-id"]
    other = api.client.get(f"{BASE}{created['id']}/deliveries", headers=api.headers("globex"))
    assert other.status_code == 404


def test_failed_workflow_names_the_step_and_unsuppressed_steps_report(
    webhook_app: WebhookApp, receiver_factory: ReceiverFactory
) -> None:
    receiver = receiver_factory()
    api = webhook_app()
    created = create(
        api,
        generate("a", ["ok"]),
        generate("b", ["value"], "a"),
        webhook_url=receiver.url,
        suppress_subtask_events=False,
    )
    assert wait_end(api, created["id"])["status"] == "FAILED"
    workflow_events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not workflow_events:
        workflow_events = [e for e in receiver.events() if e["event_type"] == "WORKFLOW_STATUS"]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert workflow_events[0]["status"] == "FAILED" and "'b'" in workflow_events[0]["error_message"]
    steps = steps_of(api.client.get(f"{BASE}{created['id']}", headers=api.headers()).json())
    wanted = {(steps["a"]["task_id"], "COMPLETED"), (steps["b"]["task_id"], "FAILED")}
    deadline = time.monotonic() + 20
    while not wanted <= {(e["task_id"], e["status"]) for e in receiver.events() if e["event_type"] == "TASK_STATUS"}:
        assert time.monotonic() < deadline, receiver.events()
        time.sleep(0.02)
    assert all(e["metadata"].get("workflow_id") == created["id"] for e in receiver.events() if "task_type" in e)
