"""Publish after commit: Celery messages are buffered in the session and sent only once it commits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

OUTBOX = "atelier_outbox"
FAILED = "atelier_publish_failed"


@dataclass(frozen=True)
class Dispatch:
    """One "run task X now" message."""

    task_id: uuid.UUID
    queue: str
    priority: int
    message_id: str
    countdown: float | None = None
    bursting: bool = False  # its tenant is over its fair share of waiting tasks
    kind: str = "task"  # "task" (tasks.run) or "training" (training.run): which Celery task runs it


def enqueue(session: Session, dispatch: Dispatch) -> None:
    """Buffer a message; it is published after the session commits and dropped if it rolls back."""
    session.info.setdefault(OUTBOX, []).append(dispatch)


def take_failures(session: Session) -> list[Dispatch]:
    """Dispatches whose publish failed at the last commit of ``session`` (and forget them)."""
    failed: list[Dispatch] = session.info.pop(FAILED, [])
    return failed


def message_priority(task_priority: int, *, bursting: bool = False) -> int:
    """Map the task priority (higher = sooner) to the broker's 0..9 band.

    Priorities 0..8 map to bands 1..9, or to 0..8 when the task's tenant is bursting: of two tasks with the same
    priority, the bursting tenant's waits behind the other's (fairness), while a higher priority still wins.
    """
    return max(0, min(8, task_priority)) + (0 if bursting else 1)


def install_outbox(factory: sessionmaker[Session], publish: Callable[[Dispatch], None]) -> None:
    """Attach the after-commit/after-rollback hooks to every session of ``factory``."""

    def after_commit(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a SAVEPOINT was released (SQLAlchemy fires after_commit for it too): nothing is visible yet
        pending: list[Dispatch] = session.info.pop(OUTBOX, [])
        for item in pending:
            try:
                publish(item)
            except Exception as exc:  # the row is committed PENDING: the reaper publishes it again
                log.warning("publishing task %s failed (%s); the reaper will publish it again", item.task_id, exc)
                session.info.setdefault(FAILED, []).append(item)

    def after_rollback(session: Session) -> None:
        if session.in_nested_transaction():
            return
        session.info.pop(OUTBOX, None)

    event.listen(factory, "after_commit", after_commit)
    event.listen(factory, "after_rollback", after_rollback)
