"""Restart Redis (nothing persisted), RabbitMQ, PostgreSQL and the API under a steady load.

Each test keeps submitting tasks while the server goes down and comes back: a submit may be refused with 503
("nothing was done, retry") meanwhile, but never fails otherwise, every accepted task completes exactly once, and
within 10 s of the server being up again a new task is accepted and completed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.conftest import (
    ChaosCluster,
    Load,
    PostgresServer,
    RabbitServer,
    RedisServer,
    assert_exactly_once,
    generation,
)
from tests.conftest import Api
from tests.distributed.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

BACK_WITHIN = 10.0

log = logging.getLogger(__name__)


def submitter(cluster: Cluster, *bodies: dict[str, Any]) -> Callable[[], tuple[int, str | None]]:
    """Create one short task through whatever in-process API the cluster has now (``bodies`` in turn)."""
    turns = itertools.cycle(bodies or [generation(0.2)])

    def submit() -> tuple[int, str | None]:
        api = cluster.client()
        response = api.client.post("/api/v1/tasks/", json=next(turns), headers=api.headers())
        return response.status_code, response.json()["id"] if response.status_code == 200 else None

    return submit


def back_within(cluster: Cluster, since: float) -> float:
    """Seconds from ``since`` until a new task was accepted and completed (submits retried while refused)."""
    api = cluster.client()
    deadline = since + 60
    while True:
        response = api.client.post("/api/v1/tasks/", json=generation(0.0), headers=api.headers())
        if response.status_code == 200:
            break
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, "no submit accepted within 60 s"
        time.sleep(0.1)
    done = api.wait(response.json()["id"], timeout=60)
    assert done["status"] == "COMPLETED", done["errors"]
    return time.monotonic() - since


def outage(
    cluster: Cluster,
    pg_url: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    *bodies: dict[str, Any],
) -> None:
    """Load, ``stop()``, a second down, ``start()``; then the service is back within 10 s and nothing is lost."""
    with Load(submitter(cluster, *bodies), interval=0.15) as load:
        time.sleep(1.5)
        stop()
        time.sleep(1.0)
        start()
        up = time.monotonic()
        elapsed = back_within(cluster, up)
        time.sleep(1.0)
    assert not load.errors, load.errors
    log.info("service back %.1f s after the server", elapsed)  # shown with -o log_cli=true
    assert elapsed <= BACK_WITHIN, f"service back only after {elapsed:.1f} s"
    # The workers rode the outage out (reconnected by themselves): none exited.
    assert all(proc.poll() is None for proc in cluster.workers), [proc.poll() for proc in cluster.workers]
    assert len(load.accepted) >= 5
    assert_exactly_once(cluster, pg_url, load.accepted)


def test_redis_restart_with_nothing_persisted(
    redis_server: RedisServer, chaos_cluster: ChaosCluster, pg_url: str
) -> None:
    cluster = chaos_cluster(redis_server.url)
    cluster.start_worker(concurrency=2)
    # the queues are gone: the reaper republishes
    outage(cluster, pg_url, redis_server.kill, redis_server.start)


def test_rabbitmq_restart(rabbit_server: RabbitServer, chaos_cluster: ChaosCluster, pg_url: str) -> None:
    cluster = chaos_cluster(rabbit_server.url)
    cluster.start_worker(concurrency=2)
    outage(cluster, pg_url, rabbit_server.kill, rabbit_server.start)


def test_postgresql_restart(
    redis_server: RedisServer, pg_server: PostgresServer, chaos_cluster: ChaosCluster, pg_url: str
) -> None:
    # A lease longer than the outage: an attempt that finished while the database was down records its outcome
    # once it is back (regression: it gave up, and the reaper ran the provider a second time).
    # Two kinds of task: one that polls the database while it works (the poll fails during the outage: a retry)
    # and one that works without calling back (it finishes while the database is down and must wait to record;
    # regression: the pool's refused connections raised psycopg's error, which the wait did not catch).
    cluster = chaos_cluster(redis_server.url, tasks={"lease_seconds": 10.0})
    cluster.start_worker(concurrency=2)
    blocking = generation(0.3, config={"script": ["block"], "slow_seconds": 0.3})
    outage(cluster, pg_url, lambda: pg_server.stop("immediate"), pg_server.start, generation(0.2), blocking)


def test_api_restart(redis_server: RedisServer, chaos_cluster: ChaosCluster, pg_url: str) -> None:
    cluster = chaos_cluster(redis_server.url)
    cluster.start_worker(concurrency=2)
    old: list[Api] = []
    lock = threading.Lock()

    def stop() -> None:  # the API process goes away (its reaper and delivery loops with it)
        with lock:
            assert cluster.api is not None
            old.append(cluster.api)
            cluster.api = None
        old[-1].close()

    def start() -> None:  # a new API process on the same database and broker: it keeps no state of its own
        cluster.client()

    def submit() -> tuple[int, str | None]:
        with lock:
            if cluster.api is None:
                return 503, None  # nobody listening: the client's submit fails and nothing was done
            return submitter(cluster)()

    with Load(submit, interval=0.15) as load:
        time.sleep(1.5)
        stop()
        time.sleep(1.0)
        started = time.monotonic()
        start()
        elapsed = back_within(cluster, started)
        time.sleep(1.0)
    assert not load.errors, load.errors
    assert elapsed <= BACK_WITHIN, f"API back only after {elapsed:.1f} s"
    assert_exactly_once(cluster, pg_url, load.accepted)
