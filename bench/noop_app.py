"""The baseline of the throughput benchmark: raw Celery no-op tasks with Atelier's Celery settings.

``bench.run`` passes every setting of Atelier's app (``atelier.engine.celery_app.celery_config``: the broker's
transport options, ``acks_late``, ``reject_on_worker_lost``, prefetch 1, recycling after N tasks, the memory limit…)
and the pool class of ``atelier worker`` as JSON in ``BENCH_CELERY_CONF``, and starts this app with the same
worker arguments on the same queue. Nothing of Atelier is imported here (the pool class, a Celery subclass, is
loaded by Celery): the baseline worker is as small as a bare Celery worker. Only the task differs: it counts.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

app = Celery("noop")
app.conf.update(json.loads(os.environ["BENCH_CELERY_CONF"]))
_counter = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
_prefix = os.environ["BENCH_PREFIX"]


@app.task(name="noop")
def noop() -> None:
    """Do nothing but count and note the time, in one round trip (the benchmark times the drain to the last one)."""
    pipe = _counter.pipeline(transaction=False)
    pipe.incr(_prefix + "done")
    pipe.set(_prefix + "last", time.time())
    pipe.execute()
