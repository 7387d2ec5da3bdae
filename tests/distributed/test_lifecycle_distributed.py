"""The Foundation task-lifecycle suite again, on PostgreSQL + Redis (and RabbitMQ) with `atelier worker` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api
from tests.distributed.cluster import ROOT, Cluster
from tests.distributed.conftest import ClusterFactory
from tests.distributed.services import postgres_database, rabbit_prefix, redis_prefix
from tests.engine import test_lifecycle as suite

pytestmark = pytest.mark.integration

CASES: list[Callable[[Api], None]] = [
    suite.test_success_runs_once_and_stores_output,
    suite.test_retry_then_success,
    suite.test_permanent_failure_after_max_retries,
    suite.test_value_error_never_retries_nor_falls_back,
    suite.test_fallback_after_primary_exhausts_retries,
    suite.test_fatal_error_skips_retries_and_fails_without_fallback,
    suite.test_fallback_failure_is_reported,
    suite.test_cancel_while_running_stops_the_provider,
    suite.test_missing_provider_fails_truthfully,
]


@pytest.fixture(scope="module")
def redis_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One PostgreSQL + Redis cluster with two prefork workers, shared by the suite's cases."""
    with postgres_database() as pg, redis_prefix() as (url, prefix):
        cluster = Cluster(tmp_path_factory.mktemp("redis-suite"), pg, url, prefix)
        try:
            cluster.start_worker(concurrency=2)
            cluster.start_worker(concurrency=1, pool="threads")
            yield cluster.client()
        finally:
            cluster.close()


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("test_") for c in CASES])
def test_suite_on_postgres_and_redis(redis_api: Api, case: Callable[[Api], None]) -> None:
    case(redis_api)


def test_suite_on_rabbitmq(tmp_path: Path) -> None:
    from atelier.providers.registry import ALL_QUEUES

    with postgres_database() as pg, rabbit_prefix(list(ALL_QUEUES)) as (url, prefix):
        cluster = Cluster(tmp_path, pg, url, prefix)
        try:
            cluster.start_worker(concurrency=2)
            api = cluster.client()
            for case in CASES:
                case(api)
        finally:
            cluster.close()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_priority_order_on_real_brokers(
    redis_cluster: ClusterFactory, rabbit_cluster: ClusterFactory, broker: str
) -> None:
    cluster = (redis_cluster if broker == "redis" else rabbit_cluster)()
    cluster.start_worker(concurrency=1, pool="solo")
    suite.assert_priority_order(cluster.client())


def test_workers_answer_celery_inspect_ping(redis_cluster: ClusterFactory) -> None:
    cluster = redis_cluster()
    hostname = cluster.start_worker(concurrency=1)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "atelier.celery_app", "inspect", "ping", "-d", hostname, "-t", "5"],
        env=cluster.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pong" in result.stdout and hostname in result.stdout


def test_worker_refuses_to_start_without_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "atelier", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "ATELIER_BROKER__URL" in result.stderr


def test_workers_show_up_in_flower(redis_cluster: ClusterFactory, tmp_path: Path) -> None:
    cluster = redis_cluster()
    hostname = cluster.start_worker(concurrency=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "atelier.celery_app",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        "--basic-auth=ops:flower-test-secret",
    ]
    with (tmp_path / "flower.log").open("wb") as log:
        flower = subprocess.Popen(cmd, env=cluster.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            workers: dict[str, object] = {}
            while time.monotonic() < deadline and hostname not in workers:
                try:
                    url = f"http://127.0.0.1:{port}/api/workers?refresh=1&workername={hostname}"
                    workers = httpx.get(url, auth=("ops", "flower-test-secret"), timeout=30).json()
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
            assert hostname in workers, (tmp_path / "flower.log").read_text()[-2000:]
        finally:
            flower.terminate()
            flower.wait(timeout=20)
