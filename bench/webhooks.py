"""Webhook delivery: what signed, ordered webhooks cost the engine, and how soon a receiver hears of a result.

    .venv/bin/python -m bench.webhooks [--tasks 200] [--rounds 3]

One embedded `atelier serve` (SQLite) and a local receiver. Each round submits N IMAGE_ADJUSTER 16×16 tasks
without a webhook (the baseline) and N with one (4 deliveries each), interleaved, and measures:

- the drain rate (submit of the first → all COMPLETED) of both batches: ratio webhook / plain;
- for the webhook batch, the rate until the receiver holds every COMPLETED event: ratio to the plain drain;
- per task, the delay from `completed_at` (database) to the COMPLETED event's arrival at the receiver (p50/p99),
  under that burst and for tasks submitted one at a time with idle gaps (`idle_*`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select

from bench.run import (
    _pct,
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


class Arrivals:
    """Arrival times of COMPLETED task events, by task id."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.lock = threading.Lock()


@contextmanager
def receiver() -> Iterator[tuple[str, Arrivals]]:
    arrivals = Arrivals()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            now = time.time()
            if body.get("event_type") == "TASK_STATUS" and body.get("status") == "COMPLETED":
                with arrivals.lock:
                    arrivals.at.setdefault(body["task_id"], now)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", arrivals
    finally:
        server.shutdown()


def _batch(api: str, headers: dict[str, str], db: str, n: int, hook: str | None, arrivals: Arrivals) -> dict[str, Any]:
    from atelier.tasks.models import Task

    body: dict[str, Any] = {"task_type": "IMAGE_ADJUSTER", "input_image": tiny_png(), "aspect_ratio": 1}
    if hook:
        body["webhook_url"] = hook
    engine = create_engine(db)
    ids: list[str] = []
    start = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            ids.append(client.post(f"{api}/api/v1/tasks/", json=body, headers=headers).json()["id"])
    keys = [uuid.UUID(i) for i in ids]
    count = select(func.count()).where(Task.id.in_(keys), Task.status == "COMPLETED")
    with engine.connect() as conn:
        while conn.execute(count).scalar() != n:
            time.sleep(0.005)
            conn.rollback()
        drained = time.perf_counter() - start
        completed = {
            str(r.id): r.completed_at.timestamp()
            for r in conn.execute(select(Task.id, Task.completed_at).where(Task.id.in_(keys)))
        }
    engine.dispose()
    result: dict[str, Any] = {"drain_rate": n / drained}
    if hook:
        deadline = time.monotonic() + 120
        while True:
            with arrivals.lock:
                got = sum(1 for i in ids if i in arrivals.at)
            if got == n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {n} COMPLETED events arrived")
            time.sleep(0.005)
        result["delivered_rate"] = n / (time.perf_counter() - start)
        with arrivals.lock:
            result["delays_ms"] = [(arrivals.at[i] - completed[i]) * 1000 for i in ids]
    return result


def bench_webhooks(n: int, rounds: int) -> dict[str, Any]:
    from atelier.core.migrate import upgrade

    with scratch() as d, database("sqlite", Path(d)) as db, receiver() as (hook, arrivals):
        tmp = Path(d)
        upgrade(db)
        env = atelier_env(tmp, db, ATELIER_WEBHOOKS__ALLOW_PRIVATE_NETWORKS='["127.0.0.1"]')
        headers = {"Authorization": f"Bearer {token(tmp)}"}
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        plain: list[float] = []
        hooked: list[float] = []
        delivered: list[float] = []
        delays: list[float] = []
        idle: list[float] = []
        with process(uvicorn_cmd("atelier.app:create_app", port, factory=True), env, tmp / "api.log"):
            wait_http(f"{api}/health")
            _batch(api, headers, db, 20, hook, arrivals)  # warm-up
            for _ in range(30):  # one at a time: the delay of a single delivery, nothing queued
                idle.extend(_batch(api, headers, db, 1, hook, arrivals)["delays_ms"])
                time.sleep(0.05)
            for _ in range(rounds):
                plain.append(_batch(api, headers, db, n, None, arrivals)["drain_rate"])
                with_hook = _batch(api, headers, db, n, hook, arrivals)
                hooked.append(with_hook["drain_rate"])
                delivered.append(with_hook["delivered_rate"])
                delays.extend(with_hook["delays_ms"])
    ratios = [h / p for h, p in zip(hooked, plain, strict=True)]
    delivered_ratios = [h / p for h, p in zip(delivered, plain, strict=True)]
    return {
        "tasks": n,
        "rounds": rounds,
        "plain_rate": statistics.median(plain),
        "webhook_rate": statistics.median(hooked),
        "drain_ratio": statistics.median(ratios),
        "drain_ratios": ratios,
        "delivered_ratio": statistics.median(delivered_ratios),
        "delivery_p50_ms": _pct(delays, 0.5),
        "delivery_p99_ms": _pct(delays, 0.99),
        "idle_delivery_p50_ms": _pct(idle, 0.5),
        "idle_delivery_p99_ms": _pct(idle, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = bench_webhooks(args.tasks, args.rounds)
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}-webhooks.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
