"""Reading the delivery log and asking for a redelivery (tenant-scoped through the task or workflow)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.sql.elements import ColumnElement

from atelier.core.auth import Principal
from atelier.core.errors import NotFoundError
from atelier.core.time import utcnow
from atelier.delivery.models import WebhookDelivery
from atelier.delivery.outbox import PENDING
from atelier.delivery.schemas import DeliveryState, WebhookAttemptPublic, WebhookDeliveryList, WebhookDeliveryPublic
from atelier.settings import WebhookSettings


def public(delivery: WebhookDelivery) -> WebhookDeliveryPublic:
    """The API view of a delivery with its attempts."""
    return WebhookDeliveryPublic(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        task_id=delivery.task_id,
        workflow_id=delivery.workflow_id,
        event_type=delivery.event_type,
        url=delivery.url,
        state=DeliveryState(delivery.state),
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.state == PENDING else None,
        retry_until=delivery.retry_until,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        payload=delivery.payload,
        attempt_log=[WebhookAttemptPublic.model_validate(a, from_attributes=True) for a in delivery.attempt_log],
    )


class DeliveryService:
    """Deliveries of one target (a task or a workflow the caller may see; the caller checks that)."""

    def __init__(self, session: Session, principal: Principal, settings: WebhookSettings) -> None:
        self.session = session
        self.principal = principal
        self.settings = settings

    def _scope(self, *, task_id: uuid.UUID | None = None, workflow_id: uuid.UUID | None = None) -> ColumnElement[bool]:
        target = WebhookDelivery.task_id == task_id if task_id else WebhookDelivery.workflow_id == workflow_id
        return (WebhookDelivery.tenant_id == self.principal.tenant) & target

    def list(
        self,
        *,
        task_id: uuid.UUID | None = None,
        workflow_id: uuid.UUID | None = None,
        state: DeliveryState | None = None,
        skip: int,
        limit: int,
    ) -> WebhookDeliveryList:
        """A page of the target's deliveries, oldest first."""
        where = self._scope(task_id=task_id, workflow_id=workflow_id)
        if state is not None:
            where = where & (WebhookDelivery.state == state.value)
        total = self.session.scalar(select(func.count()).select_from(WebhookDelivery).where(where)) or 0
        rows = self.session.scalars(
            select(WebhookDelivery)
            .where(where)
            .options(selectinload(WebhookDelivery.attempt_log))
            .order_by(WebhookDelivery.id)
            .offset(skip)
            .limit(limit)
        ).all()
        return WebhookDeliveryList(deliveries=[public(d) for d in rows], total=total, skip=skip, limit=limit)

    def redeliver(
        self, delivery_id: int, *, task_id: uuid.UUID | None = None, workflow_id: uuid.UUID | None = None
    ) -> WebhookDeliveryPublic:
        """Send the delivery again now (same ``webhook-id``, a fresh retry window), whatever its state."""
        self.principal.require_write()
        where = self._scope(task_id=task_id, workflow_id=workflow_id) & (WebhookDelivery.id == delivery_id)
        stmt = select(WebhookDelivery).where(where).options(selectinload(WebhookDelivery.attempt_log))
        delivery = self.session.scalars(stmt.with_for_update()).first()
        if delivery is None:
            raise NotFoundError(f"delivery {delivery_id} not found")
        now = utcnow()
        delivery.state = PENDING
        delivery.next_attempt_at = now
        delivery.lease_until = None
        delivery.delivered_at = None
        delivery.retry_until = now + timedelta(seconds=self.settings.retry_window_seconds)
        delivery.updated_at = now
        self.session.flush()
        return public(delivery)
