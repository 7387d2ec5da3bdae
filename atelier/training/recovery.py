"""Trainings the reaper and the start-up recovery look after: lost messages and workers that died mid-run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.engine.dispatch import enqueue
from atelier.tasks.enums import ErrorCategory
from atelier.training.enums import RUNNING_STATUSES, TrainingStatus
from atelier.training.models import TrainingTask as TrainingRow
from atelier.training.service import dispatch_for, transition

BATCH = 100
_RUNNING = [s.value for s in RUNNING_STATUSES]


@dataclass(frozen=True)
class TrainingSweep:
    """What one sweep did to trainings."""

    republished: int = 0
    resumed: int = 0
    failed: int = 0


def sweep_trainings(session: Session, runtime: Runtime, now: datetime, republish_before: datetime) -> TrainingSweep:
    """Publish again PENDING trainings whose message may be lost; resume or fail those whose lease expired."""
    pending = session.scalars(
        select(TrainingRow)
        .where(
            TrainingRow.status == TrainingStatus.PENDING.value,
            or_(TrainingRow.dispatched_at.is_(None), TrainingRow.dispatched_at < republish_before),
        )
        .order_by(TrainingRow.created_at)
        .limit(BATCH)
    ).all()
    for row in pending:
        enqueue(session, dispatch_for(row, again=True))
    expired = session.scalars(
        select(TrainingRow)
        .where(TrainingRow.status.in_(_RUNNING), TrainingRow.lease_expires_at < now)
        .order_by(TrainingRow.lease_expires_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    resumed = failed = 0
    for row in expired:
        if row.cancel_requested:
            transition(session, runtime, row, TrainingStatus.CANCELLED, message="cancelled while its worker was lost")
        elif row.resume_attempt_count >= runtime.settings.tasks.max_resumes:
            message = f"worker {row.lease_owner} lost {row.resume_attempt_count + 1} time(s); giving up"
            transition(
                session, runtime, row, TrainingStatus.FAILED, message=message, category=ErrorCategory.WORKER_LOST
            )
            failed += 1
        elif row.dispatched_at is None or row.lease_expires_at is None or row.dispatched_at < row.lease_expires_at:
            enqueue(session, dispatch_for(row))  # a fresh message: the claim takes the run over as a resume
            resumed += 1
        elif row.dispatched_at < republish_before:
            enqueue(session, dispatch_for(row, again=True))  # that message may be lost too
            resumed += 1
    return TrainingSweep(len(pending), resumed, failed)


def recover_trainings(session: Session, *, orphan_running: bool) -> int:
    """At start: publish every PENDING training again; with ``orphan_running`` resume running ones too."""
    rows = list(session.scalars(select(TrainingRow).where(TrainingRow.status == TrainingStatus.PENDING.value)))
    for row in rows:
        enqueue(session, dispatch_for(row, again=True))
    if orphan_running:
        now = utcnow()
        running = list(session.scalars(select(TrainingRow).where(TrainingRow.status.in_(_RUNNING))))
        for row in running:
            row.lease_expires_at = now - timedelta(seconds=1)
            enqueue(session, dispatch_for(row))
        rows += running
    return len(rows)
