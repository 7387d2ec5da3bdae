"""Priority changes and tenant fairness decide the start order on PostgreSQL + Redis with a worker process."""

from __future__ import annotations

import pytest

from tests.distributed.conftest import ClusterFactory

pytestmark = pytest.mark.integration

SLOW = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 60}}
QUICK = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}}


def test_reprioritising_and_fair_share_on_redis_workers(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster(limits={"fair_share_pending": 5})
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    blocker = api.create(SLOW, tenant="initech")  # the only slot is busy while the queue fills
    api.wait(blocker["id"], {"EXECUTING"}, timeout=30, tenant="initech")

    x, y, z = (api.create({**QUICK, "priority": 5}, tenant="umbrella")["id"] for _ in range(3))
    headers = api.headers("umbrella")
    assert api.client.put(f"/api/v1/tasks/{z}", json={"priority": 9}, headers=headers).status_code == 200
    assert api.client.put(f"/api/v1/tasks/{x}", json={"priority": 1}, headers=headers).status_code == 200
    burst = [api.create(QUICK, tenant="acme")["id"] for _ in range(25)]
    single = api.create(QUICK, tenant="globex")["id"]
    assert api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers("initech")).status_code == 200

    started = {tid: api.wait(tid, timeout=60, tenant="umbrella")["started_at"] for tid in (x, y, z)}
    assert sorted(started, key=started.__getitem__) == [z, y, x]
    acme = {tid: api.wait(tid, timeout=60)["started_at"] for tid in burst}
    globex = api.wait(single, timeout=60, tenant="globex")
    assert globex["status"] == "COMPLETED"
    ahead = sum(1 for at in acme.values() if at < globex["started_at"])
    assert ahead <= 5, f"{ahead} of the burst started before the single task"
    assert all(at > started[x] for at in acme.values())  # priority 1 (umbrella) beats priority 0 (acme)
