"""Monitoring at scale: p50/p99 of every monitoring call with 1 000 000 task rows in PostgreSQL.

    .venv/bin/python -m bench.monitoring [--tasks 1000000] [--workflows 100000] [--calls 40]

Seeds the rows with one `generate_series` INSERT per table (80 % of the tasks in one tenant, the rest spread over
three others; statuses, types, providers, origins and 30 days of timestamps varied), ANALYZEs, starts the API
(PostgreSQL + a Redis broker without workers, reaper off, so nothing touches the rows) and calls each monitoring
endpoint `--calls` times over HTTP with a tenant token and with an admin token (every tenant). The goal is
p99 ≤ 100 ms per call. Stats answers come from a per-process stale-while-revalidate cache, so the calls measure
that; the grouped scan behind it (what the first call of a process waits for, and what each background refresh
costs) is timed separately, `--cold` times per scope.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.run import (
    REDIS_URL,
    _flush,
    _pct,
    atelier_env,
    database,
    free_port,
    process,
    scratch,
    uvicorn_cmd,
    wait_http,
)

TYPES = [
    ("GENERATION", "FAL_STANDARD", "fal"),
    ("EDITING", "FASHN_STANDARD", "fashn"),
    ("REFINE", "FREEPIK_MAGNIFIC", "freepik"),
    ("BACKGROUND_REMOVAL", "LOCAL", "local"),
    ("IMAGE_ADJUSTER", "LOCAL", "local"),
    ("LLM_INTERACTION", "AICORE", "inference"),
    ("FACE_ENHANCER", "LOCAL", "local"),
]


def _array(values: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{v}'" for v in values) + "]"


def seed(dsn: str, tasks: int, workflows: int) -> float:
    """Insert the rows; returns the seconds it took."""
    types, providers, queues = (_array([t[i] for t in TYPES]) for i in range(3))
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            INSERT INTO tasks (id, tenant_id, task_type, status, priority, progress, task_data, fallback_active,
                queue_name, origin_instance, origin_zone, errors, retry_count, max_retries, service_requests,
                cancel_requested, attempt, is_resumed, resume_attempt_count, is_deleted, provider_type,
                created_at, updated_at, started_at, completed_at, error_category)
            SELECT gen_random_uuid(),
                CASE WHEN n % 10 < 8 THEN 'bench' ELSE 'tenant-' || (n % 3) END,
                ({types})[1 + n % 7],
                s.status, (n % 5) - 2, CASE WHEN s.status = 'COMPLETED' THEN 100 ELSE 0 END,
                jsonb_build_object('prompt', 'seeded ' || n, 'result_image_path', 'generations/' || n || '/result.png'),
                false, ({queues})[1 + n % 7], 'studio-' || (n % 5), ({_array(["eu", "us", "ap"])})[1 + n % 3],
                CASE WHEN s.status = 'FAILED' THEN '["provider said no"]'::jsonb ELSE '[]'::jsonb END,
                0, 3, '[]'::jsonb, false, 1, false, 0, false, ({providers})[1 + n % 7],
                c.created, c.created + interval '1 second',
                CASE WHEN s.status <> 'PENDING' THEN c.created + interval '200 milliseconds' END,
                CASE WHEN s.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN c.created + interval '3 seconds' END,
                CASE WHEN s.status = 'FAILED' THEN 'PROVIDER_ERROR' END
            FROM generate_series(1, {tasks}) AS n
            CROSS JOIN LATERAL (SELECT CASE WHEN n % 100 < 80 THEN 'COMPLETED' WHEN n % 100 < 90 THEN 'FAILED'
                WHEN n % 100 < 95 THEN 'PENDING' WHEN n % 100 < 96 THEN 'EXECUTING' ELSE 'CANCELLED' END AS status) s
            CROSS JOIN LATERAL (SELECT now() - (n::float / {tasks}) * interval '30 days' AS created) c
            """
        )
        conn.execute(
            f"""
            INSERT INTO workflows (id, tenant_id, name, status, config, suppress_subtask_events, total_steps,
                completed_steps, progress, origin_instance, origin_zone, errors, error_message, is_deleted,
                created_at, updated_at, started_at, completed_at)
            SELECT gen_random_uuid(), CASE WHEN n % 10 < 8 THEN 'bench' ELSE 'tenant-' || (n % 3) END,
                'shoot-' || n, CASE WHEN n % 10 < 8 THEN 'COMPLETED' WHEN n % 10 < 9 THEN 'FAILED' ELSE 'RUNNING' END,
                '{{}}'::jsonb, true, 3, 3, 1.0, 'studio-' || (n % 5), 'eu',
                CASE WHEN n % 10 = 8 THEN '["step failed"]'::jsonb ELSE '[]'::jsonb END,
                CASE WHEN n % 10 = 8 THEN 'step failed' END, false,
                c.created, c.created, c.created, c.created + interval '9 seconds'
            FROM generate_series(1, {workflows}) AS n
            CROSS JOIN LATERAL (SELECT now() - (n::float / {workflows}) * interval '30 days' AS created) c
            """
        )
        conn.execute(
            """
            INSERT INTO workflow_steps (id, workflow_id, step_id, position, task_type, config, dependencies,
                input_mappings, status, retry_count, created_at, updated_at)
            SELECT gen_random_uuid(), w.id, 's' || p, p, 'GENERATION', '{}'::jsonb,
                CASE WHEN p = 0 THEN '[]'::jsonb ELSE jsonb_build_array('s' || (p - 1)) END, '[]'::jsonb,
                'COMPLETED', 0, w.created_at, w.created_at
            FROM workflows w CROSS JOIN generate_series(0, 2) AS p
            """
        )
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def _timed(client: httpx.Client, url: str, headers: dict[str, str], calls: int) -> list[float]:
    for _ in range(3):  # warm the connection pool and the plan cache
        assert client.get(url, headers=headers).status_code == 200, url
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return times


def _scan_times(db: str, repeats: int) -> dict[str, Any]:
    """What a stats refresh costs (the grouped scan behind the cache), per scope: what the first call waits."""
    from types import SimpleNamespace
    from typing import cast

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from atelier.core.auth import Principal, Role
    from atelier.core.runtime import Runtime
    from atelier.monitoring.service import MonitoringService

    engine = create_engine(db)
    found: dict[str, Any] = {}
    runtime = cast(Runtime, SimpleNamespace(storage=None))
    for who, role in (("tenant", Role.SERVICE), ("admin", Role.ADMIN)):
        service = MonitoringService(Session(engine), Principal("bench", "bench", role), runtime)
        for name, scan in (("stats", service._task_stats), ("workflows stats", service._workflow_stats)):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                scan(None, None)
                times.append((time.perf_counter() - started) * 1000)
            found[f"{who}: {name} refresh scan"] = {"p50_ms": _round(_pct(times, 0.5)), "max_ms": _round(max(times))}
        service.session.close()
    engine.dispose()
    return found


def _round(value: float) -> float:
    return round(value, 1)


def bench_monitoring(tasks: int, workflows: int, calls: int, cold_calls: int) -> dict[str, Any]:
    from atelier.core.auth import Role, mint_token
    from atelier.core.migrate import upgrade
    from atelier.settings import Settings

    with scratch() as d, database("postgres", Path(d)) as db:
        tmp = Path(d)
        upgrade(db)
        seconds = seed(db.replace("postgresql+psycopg://", "postgresql://"), tasks, workflows)
        prefix = f"bench-mon-{uuid.uuid4().hex[:6]}."
        env = atelier_env(tmp, db, broker=REDIS_URL, prefix=prefix, ATELIER_REAPER__ENABLED="false")
        env["ATELIER_WEBHOOKS__ENABLED"] = "false"
        auth = Settings(environment="test").auth
        tenant = {"Authorization": f"Bearer {mint_token(auth, tenant='bench', role=Role.SERVICE)}"}
        admin = {"Authorization": f"Bearer {mint_token(auth, tenant='ops', role=Role.ADMIN)}"}
        port = free_port()
        api = f"http://127.0.0.1:{port}/api/v1/monitoring"
        results: dict[str, Any] = {}
        with process(uvicorn_cmd("atelier.app:create_app", port, factory=True), env, tmp / "api.log"):
            wait_http(f"http://127.0.0.1:{port}/health")
            with httpx.Client(timeout=60) as client:
                some = client.get(f"{api}/tasks", headers=tenant).json()["items"]
                task_id, workflow_id = (
                    some[0]["id"],
                    client.get(f"{api}/workflows", headers=tenant).json()["items"][0]["id"],
                )
                week_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 7 * 86400))
                calls_by_name = {
                    "tasks": "/tasks",
                    "tasks status=FAILED": "/tasks?status=FAILED",
                    "tasks type+provider": "/tasks?task_type=GENERATION&provider_type=FAL_STANDARD",
                    "tasks origin+zone": "/tasks?origin_instance=studio-1&origin_zone=eu",
                    "tasks created_after 7d": f"/tasks?created_after={week_ago}",
                    "tasks search id prefix": f"/tasks?search={task_id[:5]}",
                    "tasks sort completed_at asc": "/tasks?sort_by=completed_at&sort_order=asc",
                    "tasks sort priority": "/tasks?sort_by=priority",
                    "tasks page 100": "/tasks?page=100",
                    "task detail": f"/tasks/{task_id}",
                    "task media": f"/tasks/{task_id}/media",
                    "stats": "/stats",
                    "stats origin_zone": "/stats?origin_zone=eu",
                    "workflows": "/workflows",
                    "workflows search name": "/workflows?search=shoot-12",
                    "workflows stats": "/workflows/stats",
                    "workflow detail": f"/workflows/{workflow_id}",
                }
                for who, headers in (("tenant", tenant), ("admin", admin)):
                    for name, path in calls_by_name.items():
                        times = _timed(client, f"{api}{path}", headers, calls)
                        results[f"{who}: {name}"] = {
                            "p50_ms": round(_pct(times, 0.5), 1),
                            "p99_ms": round(_pct(times, 0.99), 1),
                        }
        _flush(prefix)
        results.update(_scan_times(db, cold_calls))
    return {
        "tasks": tasks,
        "workflows": workflows,
        "seed_seconds": round(seconds, 1),
        "calls": calls,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--cold", type=int, default=3)
    args = parser.parse_args()
    result = bench_monitoring(args.tasks, args.workflows, args.calls, args.cold)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}-monitoring.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
