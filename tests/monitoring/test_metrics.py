"""``GET /metrics``: Prometheus text that moves with the work, behind a token unless public, multiprocess-safe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_process_shutdown
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from atelier.core.auth import Role
from atelier.engine.worker import worker_app
from atelier.monitoring import metrics
from atelier.providers.registry import ALL_QUEUES
from tests.conftest import Api, AppFactory, make_settings
from tests.delivery.conftest import FAST, SECRET
from tests.fakes.fal import FalFake, create_fal_app
from tests.fakes.server import serve_fake
from tests.fakes.webhooks import Receiver
from tests.fakes.webhooks import create_app as create_receiver_app
from tests.providers.conftest import FAL_KEY, remote_api, service

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "atelier-dashboard.json"
OK = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}}
INVALID = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["value"]}}
RETRY_ONCE = {"task_type": "GENERATION", "prompt": "x", "config": {"script": ["retry", "ok"]}}
# Every label an atelier_* series may carry: nothing that grows with tasks or tenants.
LOW_CARDINALITY = {"status", "task_type", "provider_type", "queue", "outcome", "service", "mode", "le"}

Samples = list[Sample]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(api: Api, role: Role = Role.ADMIN) -> Samples:
    """GET /metrics with a token of ``role`` and parse it."""
    response = api.client.get("/metrics", headers=api.headers(role=role))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_worker_metrics_move_when_tasks_run(api: Api) -> None:
    before = scrape(api)
    tasks = [api.create(body) for body in (OK, INVALID, RETRY_ONCE)]
    done = [api.wait(task["id"]) for task in tasks]
    assert [t["status"] for t in done] == ["COMPLETED", "FAILED", "COMPLETED"]
    labels = {"task_type": "GENERATION", "provider_type": done[0]["provider_type"]}

    after = scrape(api)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("atelier_task_outcomes_total", outcome="completed") == 2
    assert delta("atelier_task_outcomes_total", outcome="failed") == 1
    assert delta("atelier_task_outcomes_total", outcome="retried") == 1
    assert delta("atelier_task_outcomes_total", outcome="cancelled") == 0
    assert delta("atelier_task_wait_seconds_count") == 3  # once per task, not per attempt
    assert delta("atelier_task_wait_seconds_sum") >= 0
    assert delta("atelier_task_run_seconds_count") == 4  # every attempt: 1 + 1 + 2
    assert delta("atelier_task_run_seconds_sum") > 0
    assert delta("atelier_task_run_seconds_bucket", le="+Inf") == 4


def test_state_gauges_come_from_the_database(app_factory: AppFactory) -> None:
    idle = app_factory(worker=False)  # nothing runs: tasks stay PENDING
    first, second = idle.create(OK), idle.create(OK)
    queue = first["queue_name"]
    samples = scrape(idle)
    pending = {"status": "PENDING", "task_type": "GENERATION", "queue": queue}
    assert value(samples, "atelier_tasks", **pending) == 2
    assert value(samples, "atelier_tasks", status="EXECUTING") == 0
    assert value(samples, "atelier_queue_depth", queue=queue) == 2
    depth_queues = {s.labels["queue"] for s in samples if s.name == "atelier_queue_depth"}
    assert set(ALL_QUEUES) <= depth_queues  # empty queues are reported as 0, not left out
    assert value(samples, "atelier_workers", mode="embedded") == 0

    response = idle.client.post(f"/api/v1/tasks/{second['id']}/cancel", headers=idle.headers())
    assert response.status_code == 200, response.text
    samples = scrape(idle)
    assert value(samples, "atelier_tasks", **pending) == 1
    assert value(samples, "atelier_queue_depth", queue=queue) == 1


def test_embedded_worker_is_counted(api: Api) -> None:
    assert value(scrape(api), "atelier_workers", mode="embedded") == 1


def test_metrics_need_an_admin_token(idle_api: Api) -> None:
    client = idle_api.client
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
    assert client.get("/metrics", headers=idle_api.headers(role=Role.VIEWER)).status_code == 403
    assert client.get("/metrics", headers=idle_api.headers(role=Role.SERVICE)).status_code == 403  # fleet-wide
    assert client.get("/metrics", headers=idle_api.headers(role=Role.ADMIN)).status_code == 200


def test_public_metrics_need_no_token_and_disabled_metrics_are_absent(app_factory: AppFactory) -> None:
    public = app_factory(worker=False, metrics={"public": True})
    response = public.client.get("/metrics")
    assert response.status_code == 200
    assert value(parse(response.text), "atelier_queue_depth") == 0
    public.close()

    disabled = app_factory(worker=False, metrics={"enabled": False})
    assert disabled.client.get("/metrics", headers=disabled.headers(role=Role.ADMIN)).status_code == 404


def test_labels_never_carry_task_ids_or_tenants(api: Api) -> None:
    ids = [api.create(OK, tenant=tenant)["id"] for tenant in ("tenant-alpha", "tenant-beta")]
    for task_id, tenant in zip(ids, ("tenant-alpha", "tenant-beta"), strict=True):
        assert api.wait(task_id, tenant=tenant)["status"] == "COMPLETED"
    ours = [s for s in scrape(api) if s.name.startswith("atelier_")]
    assert ours
    assert {name for s in ours for name in s.labels} <= LOW_CARDINALITY
    values = {v for s in ours for v in s.labels.values()}
    assert not values & {*ids, "tenant-alpha", "tenant-beta"}
    assert all(len(v) < 40 for v in values)  # no uuids, urls or messages


def test_remote_calls_move_the_provider_latency_and_error_metrics(app_factory: AppFactory) -> None:
    with serve_fake(FalFake(key=FAL_KEY), create_fal_app) as fal:
        fal.script = ["429", "status500"]  # retried inside the attempt, which then completes
        api = remote_api(app_factory, fal=service(fal.base_url, FAL_KEY))
        before = scrape(api)
        task = api.wait(api.create({"task_type": "GENERATION", "prompt": "a dress", "width": 32, "height": 32})["id"])
        assert task["status"] == "COMPLETED", task["errors"]
        after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, service="fal", **labels) - value(before, name, service="fal", **labels)

    calls = sum(1 for r in task["service_requests"] if r.get("service") == "fal")
    assert delta("atelier_provider_call_seconds_count") == calls  # every logged call, downloads included
    assert delta("atelier_provider_call_seconds_count", outcome="2xx") >= 3
    assert delta("atelier_provider_call_errors_total", outcome="429") == 1
    assert delta("atelier_provider_call_errors_total", outcome="5xx") == 1
    assert delta("atelier_provider_call_errors_total", outcome="2xx") == 0
    assert delta("atelier_provider_call_seconds_sum") > 0


def test_webhook_attempts_are_counted_by_outcome(app_factory: AppFactory) -> None:
    with serve_fake(Receiver(fail_first=1), create_receiver_app) as receiver:
        api = app_factory(webhooks={"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST})
        before = scrape(api)
        task = api.create({**OK, "webhook_url": receiver.url})
        assert api.wait(task["id"])["status"] == "COMPLETED"
        events = len(receiver.wait_for(4))

        def delta(outcome: str) -> float:
            return value(scrape(api), "atelier_webhook_attempts_total", outcome=outcome) - value(
                before, "atelier_webhook_attempts_total", outcome=outcome
            )

        eventually(lambda: delta("delivered") == events, "every delivery to be recorded")
    assert delta("retry") == 1  # the receiver's first answer was a 500
    assert delta("failed") == 0


MULTIPROCESS_CHILD = """
from atelier.monitoring import metrics
metrics.observe_task_outcome("completed", "GENERATION", "MULTI_TEST")
metrics.observe_provider_call("multi-test", "2xx", 0.2)
"""

MULTIPROCESS_SERVER = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from atelier.app import create_app
from atelier.core.migrate import upgrade
from tests.conftest import Api, make_settings, scripted_registry

settings = make_settings(Path(sys.argv[1]), metrics={"public": True})
upgrade(settings.database_url)
with TestClient(create_app(settings, providers=scripted_registry())) as client:
    api = Api(client, settings)
    task = api.create({"task_type": "GENERATION", "prompt": "x", "config": {"script": ["ok"]}})
    assert api.wait(task["id"])["status"] == "COMPLETED"
    print(client.get("/metrics").text)
"""


def run_python(code: str, env: dict[str, str], *args: str) -> str:
    """Run ``code`` in a fresh interpreter (the repository importable) and return its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_mode_sums_every_process_of_the_host(tmp_path: Path) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(folder), "PYTHONPATH": str(ROOT)}
    for _ in range(2):  # two processes that have exited by the time the API is scraped
        run_python(MULTIPROCESS_CHILD, env)
    assert len(list(folder.glob("counter_*.db"))) == 2

    samples = parse(run_python(MULTIPROCESS_SERVER, env, str(tmp_path / "data")))

    assert value(samples, "atelier_task_outcomes_total", outcome="completed", provider_type="MULTI_TEST") == 2
    assert value(samples, "atelier_provider_call_seconds_count", service="multi-test") == 2
    # the serving process's own worker thread counts too, and the database state is there
    assert value(samples, "atelier_task_outcomes_total", outcome="completed", task_type="GENERATION") == 3
    assert value(samples, "atelier_task_run_seconds_count") == 1
    assert value(samples, "atelier_queue_depth") == 0
    assert any(s.name == "atelier_tasks" or s.name == "atelier_workers" for s in samples)


def test_worker_children_mark_themselves_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "prometheus"
    folder.mkdir()
    for name in ("gauge_livesum_4242.db", "gauge_liveall_4242.db", "counter_4242.db", "gauge_livesum_7.db"):
        (folder / name).write_bytes(b"")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(folder))
    runtime, _app = worker_app(make_settings(tmp_path / "data"))
    try:
        worker_process_shutdown.send(sender=None, pid=4242, exitcode=0)
    finally:
        runtime.close()
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["counter_4242.db", "gauge_livesum_7.db"]  # counters of dead processes still count


def test_mark_process_dead_is_a_no_op_without_multiprocess_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    metrics.mark_process_dead(4242)  # would fail inside prometheus_client without a folder


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, "2xx"),
        (302, None, "3xx"),
        (404, None, "4xx"),
        (429, None, "429"),
        (503, None, "5xx"),
        (None, "ReadTimeout", "timeout"),
        (None, "ConnectError", "network"),
    ],
)
def test_call_outcome_classes(status: int | None, error: str | None, expected: str) -> None:
    assert metrics.call_outcome(status, error) == expected


def test_observations_without_a_provider_use_a_fixed_label() -> None:
    def outcomes(**labels: Any) -> float:
        return value(parse(metrics.exposition().decode()), "atelier_task_outcomes_total", **labels)

    before = outcomes(provider_type="none", task_type="UNIT_TEST")
    metrics.observe_task_outcome("failed", "UNIT_TEST", None)
    assert outcomes(provider_type="none", task_type="UNIT_TEST") == before + 1


def test_the_grafana_dashboard_queries_only_metrics_we_export(idle_api: Api) -> None:
    response = idle_api.client.get("/metrics", headers=idle_api.headers(role=Role.ADMIN))
    exported = set()
    for family in text_string_to_metric_families(response.text):
        exported |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\batelier_[a-z_]+", expr)}
    assert len(used) >= 8
    assert used <= exported, used - exported
