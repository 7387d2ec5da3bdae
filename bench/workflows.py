"""Workflow orchestration overhead: a chain of N cheap steps vs the same N tasks chained by a client.

    .venv/bin/python -m bench.workflows [--mode embedded|redis] [--steps 10] [--rounds 3]

Both sides run N IMAGE_ADJUSTER tasks on a 16×16 image, each taking the previous result as its input, on the
same server. The workflow side submits one workflow and polls it; the client side submits a task, polls
``/v2/status`` until it completes and submits the next with the previous ``result_image_path``. Both poll
every 5 ms. Reported: wall time of each side, the per-step overhead ``(workflow − client) / N`` (negative when
the engine beats a client), and the per-step hand-off ``parent completed_at → child started_at`` read from the
database for both. Goal: ≤ 20 ms per step of overhead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.run import (
    PY,
    REDIS_URL,
    _flush,
    _nothing,
    atelier_env,
    database,
    free_port,
    process,
    scratch,
    tiny_png,
    token,
    uvicorn_cmd,
    wait_http,
)

POLL = 0.005
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def chain_definition(steps: int) -> dict[str, Any]:
    """N IMAGE_ADJUSTER steps, each fed the previous step's result."""
    body: list[dict[str, Any]] = [
        {"id": "s0", "task_type": "IMAGE_ADJUSTER", "config": {"input_image": tiny_png(), "aspect_ratio": 1}}
    ]
    for n in range(1, steps):
        body.append(
            {
                "id": f"s{n}",
                "task_type": "IMAGE_ADJUSTER",
                "config": {"aspect_ratio": 1},
                "input_mappings": [
                    {"from_step": f"s{n - 1}", "from_field": "result_image_path", "to_field": "input_image"}
                ],
            }
        )
    return {"name": "bench chain", "origin_instance": "bench", "steps": body}


def run_workflow(client: httpx.Client, api: str, headers: dict[str, str], steps: int) -> tuple[float, list[str]]:
    """Wall seconds until the workflow is COMPLETED, and its step task ids in order."""
    start = time.perf_counter()
    created = client.post(f"{api}/api/v1/workflows/", json=chain_definition(steps), headers=headers)
    created.raise_for_status()
    workflow_id = created.json()["id"]
    while True:
        workflow = client.get(f"{api}/api/v1/workflows/{workflow_id}", headers=headers).json()
        if workflow["status"] in TERMINAL:
            break
        time.sleep(POLL)
    elapsed = time.perf_counter() - start
    if workflow["status"] != "COMPLETED":
        raise RuntimeError(f"workflow ended {workflow['status']}: {workflow['error_message']}")
    return elapsed, [s["task_id"] for s in workflow["steps"]]


def run_client_chain(client: httpx.Client, api: str, headers: dict[str, str], steps: int) -> tuple[float, list[str]]:
    """Wall seconds for a client to chain the same tasks itself, and their ids."""
    start = time.perf_counter()
    source, ids = tiny_png(), []
    for _ in range(steps):
        body = {"task_type": "IMAGE_ADJUSTER", "input_image": source, "aspect_ratio": 1}
        task = client.post(f"{api}/api/v1/tasks/", json=body, headers=headers).json()
        ids.append(task["id"])
        while (status := client.get(f"{api}/v2/status/{task['id']}", headers=headers).json())[
            "status"
        ] == "IN_PROGRESS":
            time.sleep(POLL)
        if status["status"] != "COMPLETED":
            raise RuntimeError(f"task ended {status}")
        source = client.get(f"{api}/api/v1/tasks/{task['id']}", headers=headers).json()["result_image_path"]
    return time.perf_counter() - start, ids


def handoffs_ms(db_url: str, ids: list[str]) -> list[float]:
    """Parent completed_at → child started_at for consecutive tasks."""
    from sqlalchemy import create_engine, select

    from atelier.tasks.models import Task

    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Task.id, Task.started_at, Task.completed_at).where(Task.id.in_([uuid.UUID(i) for i in ids]))
        )
        times = {str(r.id): (r.started_at, r.completed_at) for r in rows}
    engine.dispose()
    return [(times[b][0] - times[a][1]).total_seconds() * 1000 for a, b in itertools.pairwise(ids)]


def bench(mode: str, steps: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of both sides on one server; medians reported."""
    with scratch() as d, database("sqlite" if mode == "embedded" else "postgres", Path(d)) as db:
        tmp = Path(d)
        from atelier.core.migrate import upgrade

        upgrade(db)
        prefix = f"bench-wf-{uuid.uuid4().hex[:6]}."
        env = atelier_env(tmp, db, broker=None if mode == "embedded" else REDIS_URL, prefix=prefix)
        headers = {"Authorization": f"Bearer {token(tmp)}"}
        api = f"http://127.0.0.1:{(port := free_port())}"
        workflow_s, client_s, workflow_hand, client_hand = [], [], [], []
        with process(uvicorn_cmd("atelier.app:create_app", port, factory=True), env, tmp / "api.log"):
            worker_cmd = [PY, "-m", "atelier", "worker", "-c", "2", "--loglevel", "WARNING"]
            with process(worker_cmd, env, tmp / "worker.log") if mode == "redis" else _nothing():
                wait_http(f"{api}/health")
                with httpx.Client(timeout=30) as client:
                    run_workflow(client, api, headers, 3)  # warm-up
                    run_client_chain(client, api, headers, 3)
                    for _ in range(rounds):
                        seconds, ids = run_workflow(client, api, headers, steps)
                        workflow_s.append(seconds)
                        workflow_hand += handoffs_ms(db, ids)
                        seconds, ids = run_client_chain(client, api, headers, steps)
                        client_s.append(seconds)
                        client_hand += handoffs_ms(db, ids)
        if mode == "redis":
            _flush(prefix)
    wf, cl = statistics.median(workflow_s), statistics.median(client_s)
    return {
        "mode": mode,
        "steps": steps,
        "rounds": rounds,
        "workflow_seconds": wf,
        "client_chain_seconds": cl,
        "overhead_ms_per_step": (wf - cl) / steps * 1000,
        "workflow_vs_client": wf / cl,
        "handoff_ms_median": {"workflow": statistics.median(workflow_hand), "client": statistics.median(client_hand)},
        "goal": "overhead <= 20 ms per step",
    }


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["embedded", "redis"], default="embedded")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(bench(args.mode, args.steps, args.rounds), indent=2))


if __name__ == "__main__":
    main()
