"""The reaper: republish tasks whose message was lost; resume or fail tasks whose worker died; forget expired keys.

It runs periodically in every ``atelier serve`` process (embedded and distributed). On PostgreSQL each sweep
first takes a transaction-scoped advisory lock, so however many processes run the loop, at most one sweep
works at a time and none does the same work twice; SQLite deployments have a single process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from atelier.core import idempotency
from atelier.core.db import session_scope, try_leadership
from atelier.core.periodic import PeriodicThread
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.engine.dispatch import enqueue
from atelier.tasks import lifetimes, repository
from atelier.tasks.enums import ErrorCategory, TaskStatus
from atelier.tasks.execution import dispatch_for
from atelier.tasks.models import Task
from atelier.tasks.transitions import transition
from atelier.training.recovery import sweep_trainings

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x61746C72  # "atlr"
BATCH = 500


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    ran: bool
    republished: int = 0
    resumed: int = 0
    failed: int = 0
    expired_keys: int = 0
    queue_timeouts: int = 0
    run_timeouts: int = 0
    purged: int = 0


def _no_live_message(task: Task, republish_before: datetime) -> bool:
    """Whether no message has been sent since the lease expired (or the last one is old enough to be lost)."""
    sent = task.dispatched_at
    return sent is None or task.lease_expires_at is None or sent < task.lease_expires_at or sent < republish_before


def sweep(runtime: Runtime) -> SweepReport:
    """One pass: lost PENDING messages are republished, expired leases resumed or failed (WORKER_LOST).

    It also deletes up to ``BATCH`` expired ``Idempotency-Key`` rows (the oldest first), cancels tasks past their
    queue-wait deadline, fails attempts past their run timeout and purges tasks past their retention.
    """
    settings = runtime.settings
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        if not try_leadership(session, ADVISORY_LOCK_KEY):
            return SweepReport(ran=False)
        republish_before = now - timedelta(seconds=settings.reaper.republish_after_seconds)
        stale = repository.stale_pending(session, now=now, dispatched_before=republish_before, limit=BATCH)
        for task in stale:
            enqueue(session, dispatch_for(task))
        resumed = failed = 0
        for task in repository.expired_leases(session, now=now, limit=BATCH):
            if task.resume_attempt_count >= settings.tasks.max_resumes:
                message = f"worker {task.lease_owner} lost {task.resume_attempt_count + 1} time(s); giving up"
                transition(session, task, TaskStatus.FAILED, message=message, category=ErrorCategory.WORKER_LOST)
                failed += 1
            elif _no_live_message(task, republish_before):
                enqueue(session, dispatch_for(task))  # the claim takes it over as a resume
                resumed += 1
        trainings = sweep_trainings(session, runtime, now, republish_before)
        expired_keys = idempotency.delete_expired(session, now=now, limit=BATCH)
        queue_timeouts = lifetimes.expire_overdue(session, now, BATCH)
        run_timeouts = lifetimes.fail_overruns(session, now, BATCH)
        purged = lifetimes.purge_expired(session, runtime.storage, now, BATCH)
    report = SweepReport(
        ran=True,
        republished=len(stale) + trainings.republished,
        resumed=resumed + trainings.resumed,
        failed=failed + trainings.failed,
        expired_keys=expired_keys,
        queue_timeouts=queue_timeouts,
        run_timeouts=run_timeouts,
        purged=purged,
    )
    if any((report.republished, report.resumed, report.failed, expired_keys, queue_timeouts, run_timeouts, purged)):
        log.info("reaper: %s", report)
    return report


class ReaperLoop(PeriodicThread):
    """Run ``sweep`` every ``reaper.interval_seconds`` in a daemon thread until stopped."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__("atelier-reaper", runtime.settings.reaper.interval_seconds, lambda: sweep(runtime))
