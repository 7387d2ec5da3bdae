"""Celery's prefork pool, replacing a dead child within a second.

Celery replaces a pool process that died (OOM killer, ``kill -9``, a crashing native library) when it sees the
process's exit, and otherwise on a 5-second timer. The exit is not always seen (measured with ``kill -9`` of the
child of an ``atelier worker -c 1``: about half the replacements waited for the timer), and a worker with no
pool process left takes no task meanwhile. Here the timer runs every second; a round checks the children's exit
codes and forks what is missing, which costs microseconds when nothing is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.concurrency.asynpool import AsynPool as CeleryAsynPool
from celery.concurrency.prefork import TaskPool as CeleryTaskPool

MAINTAIN_EVERY_SECONDS = 1.0


class AsynPool(CeleryAsynPool):
    @property
    def timers(self) -> dict[Callable[..., Any], float]:
        return {self.maintain_pool: MAINTAIN_EVERY_SECONDS}


class TaskPool(CeleryTaskPool):
    """``atelier worker --pool prefork`` (the default)."""

    Pool = AsynPool
