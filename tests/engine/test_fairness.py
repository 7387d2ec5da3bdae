"""One tenant's burst does not starve another tenant's single task (embedded engine)."""

from __future__ import annotations

from tests.conftest import AppFactory

SLOW = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["slow"], "slow_seconds": 30}}
QUICK = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}}


def test_a_single_task_overtakes_another_tenants_burst(app_factory: AppFactory) -> None:
    api = app_factory(concurrency=1, limits={"fair_share_pending": 5})
    blocker = api.create(SLOW, tenant="initech")  # holds the only slot while the queue fills
    api.wait(blocker["id"], {"EXECUTING"}, tenant="initech")
    burst = [api.create(QUICK, tenant="acme")["id"] for _ in range(40)]
    single = api.create(QUICK, tenant="globex")["id"]
    api.client.post(f"/api/v1/tasks/{blocker['id']}/cancel", headers=api.headers("initech"))
    started = {tid: api.wait(tid)["started_at"] for tid in burst}
    globex = api.wait(single, tenant="globex")
    assert globex["status"] == "COMPLETED"
    ahead = sum(1 for at in started.values() if at < globex["started_at"])
    assert ahead <= 5, f"{ahead} of the burst started first"  # only the burst's fair share (FIFO would be 40)
