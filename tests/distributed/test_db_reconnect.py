"""Workers keep no pool pre-ping: a connection killed under them is replaced on first use, the task still runs."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.distributed.conftest import ClusterFactory
from tests.engine.test_lifecycle import generation

pytestmark = pytest.mark.integration


def _kill_other_backends(pg_url: str) -> int:
    url = make_url(pg_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="postgres", autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.database,),
        ).fetchall()
    return len(rows)


def test_worker_survives_its_connections_being_killed(redis_cluster: ClusterFactory, pg_url: str) -> None:
    cluster = redis_cluster(reaper={"enabled": False})  # no republish to hide a lost run
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    first = api.wait(api.create(generation(["ok"]))["id"], timeout=30)
    assert first["status"] == "COMPLETED"

    assert _kill_other_backends(pg_url) >= 1  # the worker's pooled connection (and the API's) die
    created = api.create(generation(["ok"]))
    done = api.wait(created["id"], timeout=30)
    assert done["status"] == "COMPLETED", done["errors"]
    assert done["celery_task_id"] == created["celery_task_id"]  # the first delivery ran it: no republish
    assert done["retry_count"] == 0
