"""The webhook receiver is down for a while, then up: every event is delivered, in order, and deduplicable."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tests.chaos.conftest import ChaosCluster, RedisServer, generation
from tests.delivery.conftest import FAST, SECRET
from tests.delivery.test_webhooks import LIFECYCLE, kinds
from tests.fakes.server import free_port, serve_fake
from tests.fakes.webhooks import Receiver, create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def test_receiver_down_then_up_gets_every_event(redis_server: RedisServer, chaos_cluster: ChaosCluster) -> None:
    cluster = chaos_cluster(
        redis_server.url, webhooks={"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST}
    )
    cluster.start_worker(concurrency=2)
    api = cluster.client()
    port = free_port()
    receiver = Receiver()  # one receiver's records across its two lives on the same port
    url = f"http://127.0.0.1:{port}/hook"

    with serve_fake(receiver, create_app, port=port):
        ids = [api.create({**generation(0.1), "webhook_url": url})["id"] for _ in range(3)]
        receiver.wait_for(4 * len(ids), timeout=60)
    # down: connection refused for every attempt meanwhile
    ids += [api.create({**generation(0.1), "webhook_url": url})["id"] for _ in range(5)]
    for task_id in ids:
        assert api.wait(task_id, timeout=60)["status"] == "COMPLETED"
    time.sleep(1.0)
    refused = api.client.get(f"/api/v1/tasks/{ids[-1]}/deliveries", headers=api.headers()).json()["deliveries"]
    assert refused and refused[0]["state"] == "PENDING" and refused[0]["attempts"] >= 1
    with serve_fake(receiver, create_app, port=port):  # up again
        events = receiver.wait_for(4 * len(ids), timeout=60)

    by_task: dict[str, list[dict[str, object]]] = defaultdict(list)
    for event in events:
        by_task[str(event["task_id"])].append(event)
    assert set(by_task) == set(ids)
    for task_id in ids:
        assert kinds(by_task[task_id]) == LIFECYCLE  # each task's events in order, none missing
    bodies: dict[str, bytes] = {}
    for request in receiver.requests:  # a repeat carries the same webhook-id and the same body: deduplicable
        assert bodies.setdefault(request.headers["webhook-id"], request.body) == request.body
    assert len(bodies) == 4 * len(ids)
