"""kill -9 a worker mid-task 50 times under a steady load: every task ends, none is lost, none completes twice.

Two victims, each an ``atelier worker -c 1`` (prefork), run next to a steady worker, and each takes 25 of the kills
(concurrently, which halves the time the suite spends here). Each kill waits for the victim to claim a task, then
SIGKILLs it while the scripted provider is still busy (before it writes any output): most kills hit the pool process
running the task (Celery forks a new one: the message is rejected back to the queue, the lease is still held, so the
reaper resumes the task once the lease expires); the 13th kill of each victim takes the whole worker (process group)
down and a new worker process is started. Side effects are counted from the provider's markers in storage.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.chaos.conftest import ChaosCluster, Load, RedisServer, assert_exactly_once, db_url, generation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 50
VICTIMS = 2  # worker processes killed concurrently, KILLS // VICTIMS times each
WHOLE_WORKER_AT = 13  # this kill of each victim takes the whole worker (master and pool) down
SLOW_SECONDS = 0.5  # the provider is busy this long before it writes its outputs
FRESH = 0.2  # a claim first seen by a poll that started at most this long after the previous one is this young


def pool_processes(pid: int) -> list[int]:
    """Child processes of ``pid`` (the Celery master's pool)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


class ClaimWatch:
    """Sees the victim's claims in the database as they happen (a claim sets ``lease_owner`` to ``host:pid:…``)."""

    def __init__(self, pg_url: str) -> None:
        self.conn = psycopg.connect(db_url(pg_url), autocommit=True)
        self.seen: set[tuple[str, str]] = set()

    def fresh_claim(self, master_pid: int, timeout: float = 30.0) -> str:
        """Wait for a claim by the worker whose master is ``master_pid`` that is at most ``FRESH`` seconds old."""
        prefix = f"{socket.gethostname()}:{master_pid}:%"
        deadline = time.monotonic() + timeout
        previous = 0.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            rows = self.conn.execute(
                "SELECT id::text, lease_owner FROM tasks WHERE status = 'EXECUTING' AND lease_owner LIKE %s",
                (prefix,),
            ).fetchall()
            new = [(task_id, owner) for task_id, owner in rows if (task_id, owner) not in self.seen]
            self.seen.update((task_id, owner) for task_id, owner in rows)
            if new and started - previous <= FRESH:
                return str(new[0][0])
            previous = started
            time.sleep(0.01)
        raise AssertionError(f"worker {master_pid} claimed no task within {timeout:g} s")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@pytest.mark.timeout(300)
def test_fifty_kill_9_mid_task_under_load(redis_server: RedisServer, chaos_cluster: ChaosCluster, pg_url: str) -> None:
    cluster = chaos_cluster(redis_server.url, tasks={"max_resumes": 20})
    cluster.start_worker(concurrency=2, name="steady@chaos")
    api = cluster.client()
    killed: list[str] = []
    failures: list[BaseException] = []
    workers_lock = threading.Lock()  # start_worker appends to cluster.workers

    def start_victim(name: str) -> int:
        with workers_lock:
            cluster.start_worker(concurrency=1, name=name)
            return len(cluster.workers) - 1

    def kill_loop(slot: int) -> None:
        watch = ClaimWatch(pg_url)
        try:
            victim = start_victim(f"victim{slot}-0@chaos")
            for kill in range(1, KILLS // VICTIMS + 1):
                master = cluster.workers[victim].pid
                killed.append(watch.fresh_claim(master))
                if kill != WHOLE_WORKER_AT:
                    pool = pool_processes(master)
                    assert len(pool) == 1, f"expected one pool process under {master}: {pool}"
                    os.kill(pool[0], signal.SIGKILL)
                else:
                    cluster.kill_worker(victim)
                    victim = start_victim(f"victim{slot}-{kill}@chaos")
        except BaseException as exc:  # surfaced by the test below
            failures.append(exc)
        finally:
            watch.close()

    def submit() -> tuple[int, str | None]:
        response = api.client.post(
            "/api/v1/tasks/", json=generation(SLOW_SECONDS, queue_name="local"), headers=api.headers()
        )
        return response.status_code, response.json()["id"] if response.status_code == 200 else None

    with Load(submit, interval=0.2) as load:
        killers = [threading.Thread(target=kill_loop, args=(slot,), name=f"killer{slot}") for slot in range(VICTIMS)]
        for thread in killers:
            thread.start()
        for thread in killers:
            thread.join(timeout=240)
    assert not failures, failures
    assert not any(thread.is_alive() for thread in killers), "a kill loop did not finish"
    assert len(killed) == KILLS
    assert not load.errors, load.errors
    assert len(load.accepted) >= KILLS
    assert set(killed) <= set(load.accepted)
    assert_exactly_once(cluster, pg_url, load.accepted, timeout=120)
    with psycopg.connect(db_url(pg_url), autocommit=True) as conn:
        resumes = conn.execute("SELECT sum(resume_attempt_count) FROM tasks").fetchone()
    assert resumes is not None and resumes[0] == KILLS  # every kill interrupted a run, which was resumed once
