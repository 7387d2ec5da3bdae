"""Celery worker threads inside the API process (the embedded default)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from celery import Celery
from celery.worker import WorkController

log = logging.getLogger(__name__)


class _Controller(WorkController):
    """A WorkController that reports when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self._ready.set()


class EmbeddedWorker:
    """Start/stop a thread-pool Celery worker consuming ``queues`` from the in-process broker."""

    def __init__(self, app: Celery, *, concurrency: int, queues: list[str]) -> None:
        self.app = app
        self.concurrency = concurrency
        self.queues = queues
        self.hostname = f"embedded-{socket.gethostname()}-{threading.get_native_id()}@atelier"
        self._controller: _Controller | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start the worker and wait until it consumes."""
        # Celery's thread pool resolves tasks through the process-wide default app, so the embedded worker's
        # app must be it: one embedded worker per process.
        self.app.set_default()
        self._controller = _Controller(
            app=self.app,
            hostname=self.hostname,
            concurrency=self.concurrency,
            pool="threads",
            queues=self.queues,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=logging.WARNING,
        )
        self._thread = threading.Thread(target=self._controller.start, name="atelier-worker", daemon=True)
        self._thread.start()
        if not self._controller._ready.wait(timeout):
            raise RuntimeError("embedded Celery worker did not start")
        log.info("embedded worker %s consuming %s", self.hostname, ",".join(self.queues))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming and wait for running tasks (warm shutdown)."""
        if self._controller is None or self._thread is None:
            return
        self._controller.stop(in_sighandler=False, exitcode=0)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("embedded worker did not stop within %.0fs", timeout)
        self._controller = None
        self._thread = None
