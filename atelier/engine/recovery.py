"""Start-up recovery: publish again every task the database says is waiting (nothing accepted is lost)."""

from __future__ import annotations

import logging
from datetime import timedelta

from atelier.core.db import session_scope
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.engine.dispatch import enqueue
from atelier.tasks import repository
from atelier.tasks.execution import dispatch_for
from atelier.training.recovery import recover_trainings

log = logging.getLogger(__name__)


def recover(runtime: Runtime, *, orphan_running: bool) -> int:
    """Re-publish PENDING tasks; with ``orphan_running`` also resume EXECUTING ones (their worker is gone).

    In the embedded mode this process owns the only worker, so at start every EXECUTING row is an orphan of
    a previous process: its lease is expired so the claim treats the run as a resume (``is_resumed``).
    """
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        stale_before = now + timedelta(days=36500) if orphan_running else now
        tasks = repository.recoverable(session, stale_before=stale_before)
        for task in tasks:
            if task.status == "EXECUTING":
                task.lease_expires_at = now - timedelta(seconds=1)
            delay = max((task.not_before - now).total_seconds(), 0.0) if task.not_before else None
            enqueue(session, dispatch_for(task, countdown=delay))
        trainings = recover_trainings(session, orphan_running=orphan_running)
    if trainings:
        log.info("recovery: re-published %d training(s)", trainings)
    if tasks:
        log.info("recovery: re-published %d task(s)", len(tasks))
    return len(tasks)
