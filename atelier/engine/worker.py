"""Distributed Celery workers (``atelier worker``): the same runtime and task runner as the embedded default."""

from __future__ import annotations

import gc
import logging
import mimetypes
import socket

from celery import Celery
from celery.signals import worker_before_create_process, worker_process_init, worker_process_shutdown
from PIL import Image

import atelier.monitoring.workers  # noqa: F401 - registers the atelier_memory inspect command
from atelier.core.runtime import Runtime, build_runtime
from atelier.engine.celery_app import queue_name
from atelier.monitoring.metrics import mark_process_dead
from atelier.providers.registry import ALL_QUEUES
from atelier.settings import Settings
from atelier.tasks.transitions import WORKER_STATEMENTS

log = logging.getLogger(__name__)

PREFORK_POOL = "atelier.engine.pool:TaskPool"  # what `--pool prefork` runs (atelier/engine/pool.py)


def worker_app(settings: Settings) -> tuple[Runtime, Celery]:
    """Build the runtime for a worker process and make its Celery app the process default."""
    # No pool pre-ping: the runner retries a statement whose connection died (one round trip less per use).
    runtime = build_runtime(settings, pre_ping=False)
    runtime.celery.set_default()
    # `--pool prefork` (the default) takes this pool: Celery's prefork, replacing a dead child within a second.
    runtime.celery.conf.worker_pool = PREFORK_POOL

    preload(runtime)
    worker_before_create_process.connect(freeze_before_fork, weak=False)
    worker_process_init.connect(lambda **_: start_pool_process(runtime), weak=False)
    # Multiprocess metrics (PROMETHEUS_MULTIPROC_DIR): a recycled child's live gauges must not outlive it.
    worker_process_shutdown.connect(mark_process_dead, weak=False)
    return runtime, runtime.celery


def preload(runtime: Runtime) -> None:
    """Build, in the worker's main process, what every task run needs, before the pool forks.

    Every pool process (and every replacement of a recycled one) inherits it instead of building it during its
    first task: the image codecs (PIL loads most of them at the first image it meets, up to 55 ms), the MIME
    type table that storage writes read (8 ms), and the statements every run executes, compiled for this
    database (14 ms). A new process's first task took 36 ms against 4 ms for the next ones; 12 ms with this
    and ``start_pool_process``.
    """
    Image.init()
    mimetypes.init()
    for statement in WORKER_STATEMENTS:
        statement.prepare(runtime.engine.dialect)


def freeze_before_fork(**_: object) -> None:
    """Before the first pool process is forked: move every object the main process has to the permanent generation.

    Celery runs a full garbage collection before it forks each pool process, replacements of recycled ones
    included, and the main process serves no pool process meanwhile (no message fetched, no ack): 85 ms over
    the ~180 000 objects of a booted worker, at every recycle. Frozen objects are not scanned (0.01 ms), and the
    children, which inherit the frozen generation, do not scan them either: their collections neither take as
    long nor write to the pages they share with the parent. Once per process: what becomes garbage after the
    freeze must stay collectable, so objects created later are not frozen.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def start_pool_process(runtime: Runtime) -> None:
    """In a new pool process, before its first task."""
    # It inherited the parent's pooled DB connections and HTTP sockets; it must not use them.
    runtime.after_fork()
    # Connect now: the first task would otherwise wait for the connection.
    runtime.warm_up()


def worker_argv(
    settings: Settings, queues: list[str], concurrency: int | None, pool: str, loglevel: str, hostname: str | None
) -> list[str]:
    """Celery ``worker`` arguments for the given logical queues."""
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown:
        log.warning("queues %s are not produced by any provider routing; consuming them anyway", unknown)
    argv = [
        "worker",
        "--queues",
        ",".join(queue_name(settings, q) for q in queues),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "--hostname",
        hostname or f"atelier-{socket.gethostname()}@%h",
        # Mingle asks the other workers for their revoked ids and clocks at every (re)connect and waits a second
        # for answers; cancellation lives in the database here, so it only delayed start-up and reconnects.
        "--without-mingle",
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def run_worker(
    settings: Settings, queues: list[str], concurrency: int | None, pool: str, loglevel: str, hostname: str | None
) -> None:
    """Run a Celery worker in the foreground until it is stopped."""
    _runtime, app = worker_app(settings)
    app.worker_main(worker_argv(settings, queues, concurrency, pool, loglevel, hostname))
