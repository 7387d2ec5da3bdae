"""The baseline of the throughput benchmark: raw Celery no-op tasks with Atelier's worker settings."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("noop", broker=os.environ["BENCH_BROKER_URL"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    broker_transport_options={"global_keyprefix": os.environ["BENCH_PREFIX"]},
    task_default_queue=os.environ["BENCH_PREFIX"] + "noop",
)
_counter = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
_prefix = os.environ["BENCH_PREFIX"]


@app.task(name="noop")
def noop() -> None:
    """Do nothing but count and note the time, in one round trip (the benchmark times the drain to the last one)."""
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(_prefix + "done")
    pipe.set(_prefix + "last", time.time())
    pipe.execute()
