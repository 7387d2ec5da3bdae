"""The webhook outbox: events written with the state change become deliveries, exactly once.

Task events are flagged ``webhook_pending`` by the statement that writes them (the task has a ``webhook_url``),
so the flag commits or rolls back with the change itself, including on the single-statement claim and
completion paths. ``relay`` turns flagged events into ``webhook_deliveries`` rows and clears the flags in ONE
transaction; on PostgreSQL it first takes an advisory lock, so one relay works at a time and deliveries of a task
get ids in event order. Workflow outcomes are written straight into ``webhook_deliveries`` by the workflow
service, in the transaction that finishes the workflow.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import CursorResult, func, select, true, update
from sqlalchemy.orm import Session

from atelier.core.db import lock_for_write, session_scope, try_leadership
from atelier.core.time import utcnow
from atelier.delivery.events import BaseEvent, task_event_payloads, workflow_payload
from atelier.delivery.models import WebhookDelivery
from atelier.tasks.models import Task, TaskEvent
from atelier.workflows.models import Workflow

if TYPE_CHECKING:
    from atelier.core.runtime import Runtime

log = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x61746C77  # "atlw"
BATCH = 500
PENDING, DELIVERED, FAILED = "PENDING", "DELIVERED", "FAILED"


def new_delivery(
    *,
    tenant: str,
    target: str,
    url: str,
    payload: BaseEvent,
    now: datetime,
    window_seconds: float,
    task_id: uuid.UUID | None = None,
    workflow_id: uuid.UUID | None = None,
    event_id: int | None = None,
    training_id: uuid.UUID | None = None,
) -> WebhookDelivery:
    """A PENDING delivery, due now, retried until ``now + window``; its ``webhook_id`` never changes."""
    return WebhookDelivery(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        tenant_id=tenant,
        target=target,
        task_id=task_id,
        workflow_id=workflow_id,
        training_id=training_id,
        event_id=event_id,
        event_type=payload.event_type.value,
        url=url,
        payload=payload.model_dump(mode="json"),
        state=PENDING,
        attempts=0,
        next_attempt_at=now,
        retry_until=now + timedelta(seconds=window_seconds),
        created_at=now,
        updated_at=now,
    )


def relay(runtime: Runtime) -> int:
    """Move up to ``BATCH`` flagged task events into deliveries; returns how many deliveries were made."""
    window = runtime.settings.webhooks.retry_window_seconds
    pending = select(TaskEvent).where(TaskEvent.webhook_pending == true()).order_by(TaskEvent.id).limit(BATCH)
    with session_scope(runtime.sessions) as session:
        if session.scalar(pending.with_only_columns(TaskEvent.id)) is None:
            return 0  # the common case: a cheap indexed read, no lock taken
    with session_scope(runtime.sessions) as session:
        lock_for_write(session)  # SQLite: decide and write under one write lock
        if not try_leadership(session, RELAY_LOCK_KEY):
            return 0
        events = session.scalars(pending).all()
        tasks = {t.id: t for t in session.scalars(select(Task).where(Task.id.in_({e.task_id for e in events})))}
        now = utcnow()
        made = 0
        for event in events:
            task = tasks.get(event.task_id)
            if task is None or not task.webhook_url:
                continue
            for payload in task_event_payloads(event, task):
                session.add(
                    new_delivery(
                        tenant=task.tenant_id,
                        target=str(task.id),
                        url=task.webhook_url,
                        payload=payload,
                        now=now,
                        window_seconds=window,
                        task_id=task.id,
                        event_id=event.id,
                    )
                )
                made += 1
        cleared = session.execute(
            update(TaskEvent)
            .where(TaskEvent.id.in_([e.id for e in events]), TaskEvent.webhook_pending == true())
            .values(webhook_pending=False)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(cleared, CursorResult)  # an UPDATE's result
        if cleared.rowcount != len(events):  # another relay took some of them meanwhile: let it have them all
            session.rollback()
            return 0
    return made


def workflow_finished(session: Session, workflow: Workflow, window_seconds: float) -> None:
    """Queue the workflow's outcome for its ``webhook_url`` (same transaction as the status change)."""
    if not workflow.webhook_url:
        return
    earlier = session.scalar(select(func.count()).where(WebhookDelivery.workflow_id == workflow.id)) or 0
    session.add(
        new_delivery(
            tenant=workflow.tenant_id,
            target=str(workflow.id),
            url=workflow.webhook_url,
            payload=workflow_payload(workflow, earlier + 1),
            now=utcnow(),
            window_seconds=window_seconds,
            workflow_id=workflow.id,
        )
    )
