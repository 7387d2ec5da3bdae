"""Public models of the delivery log."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class DeliveryState(StrEnum):
    """Where a webhook delivery stands."""

    PENDING = "PENDING"  # due now, in flight, or waiting for its next attempt
    DELIVERED = "DELIVERED"  # the receiver answered 2xx
    FAILED = "FAILED"  # given up: retry window over, receiver answered 410, or the URL is not allowed


class WebhookAttemptPublic(BaseModel):
    """One HTTP attempt."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = Field(None, description="The receiver's HTTP status; empty when no answer came.")
    error: str | None = None
    response_excerpt: str | None = Field(None, description="The first 512 characters of the receiver's answer.")


class WebhookDeliveryPublic(BaseModel):
    """One event sent (or to be sent) to a webhook URL."""

    id: int
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt; dedupe on it.")
    task_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    event_type: str
    url: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None = Field(None, description="When the next attempt is due (PENDING only).")
    retry_until: datetime = Field(description="Failing attempts are retried until then.")
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    payload: dict[str, Any] = Field(description="The JSON body (one of the event schemas).")
    attempt_log: list[WebhookAttemptPublic]


class WebhookDeliveryList(BaseModel):
    """A page of deliveries, oldest first (the order they are sent in)."""

    deliveries: list[WebhookDeliveryPublic]
    total: int
    skip: int
    limit: int
