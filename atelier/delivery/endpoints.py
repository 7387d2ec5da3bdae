"""The delivery log: what was sent to a task's or workflow's webhook, and redelivery on demand."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query

from atelier.core.deps import PrincipalDep, RuntimeDep, SessionDep
from atelier.delivery.events import (
    BaseEvent,
    InferenceStatusEvent,
    PreprocessingStatusEvent,
    TaskCreatedEvent,
    TaskStatusEvent,
    TrainingStatusEvent,
    WorkflowStatusEvent,
)
from atelier.delivery.schemas import DeliveryState, WebhookDeliveryList, WebhookDeliveryPublic
from atelier.delivery.service import DeliveryService
from atelier.tasks.service import TaskService
from atelier.workflows.service import WorkflowService

router = APIRouter(tags=["webhooks"])

Skip = Annotated[int, Query(ge=0, le=2**31 - 1, description="Deliveries to skip")]  # bounded: OFFSET is 64-bit
Limit = Annotated[int, Query(ge=1, le=500, description="Page size")]
State = Annotated[DeliveryState | None, Query(description="Only deliveries in this state")]


@router.get("/api/v1/tasks/{task_id}/deliveries", summary="List Task Webhook Deliveries")
def list_task_deliveries(
    task_id: uuid.UUID,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    state: State = None,
    skip: Skip = 0,
    limit: Limit = 50,
) -> WebhookDeliveryList:
    """Every event sent (or to be sent) to the task's `webhook_url`: state, attempts with status codes and timings,
    and the next attempt. Oldest first, which is the order they are delivered in."""
    TaskService(session, rt, principal).get(task_id)
    service = DeliveryService(session, principal, rt.settings.webhooks)
    return service.list(task_id=task_id, state=state, skip=skip, limit=limit)


@router.post("/api/v1/tasks/{task_id}/deliveries/{delivery_id}/redeliver", summary="Redeliver Task Webhook")
def redeliver_task_delivery(
    task_id: uuid.UUID, delivery_id: int, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WebhookDeliveryPublic:
    """Send one delivery again now, with the same `webhook-id` (receivers that saw it can drop it) and a fresh
    retry window."""
    TaskService(session, rt, principal).get(task_id)
    return DeliveryService(session, principal, rt.settings.webhooks).redeliver(delivery_id, task_id=task_id)


@router.get("/api/v1/workflows/{workflow_id}/deliveries", summary="List Workflow Webhook Deliveries")
def list_workflow_deliveries(
    workflow_id: uuid.UUID,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    state: State = None,
    skip: Skip = 0,
    limit: Limit = 50,
) -> WebhookDeliveryList:
    """Outcomes of the workflow sent to its `webhook_url` (one per time it finished)."""
    WorkflowService(session, rt, principal).get(workflow_id)
    service = DeliveryService(session, principal, rt.settings.webhooks)
    return service.list(workflow_id=workflow_id, state=state, skip=skip, limit=limit)


@router.post("/api/v1/workflows/{workflow_id}/deliveries/{delivery_id}/redeliver", summary="Redeliver Workflow Webhook")
def redeliver_workflow_delivery(
    workflow_id: uuid.UUID, delivery_id: int, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WebhookDeliveryPublic:
    """Send one workflow delivery again now (same `webhook-id`, fresh retry window)."""
    WorkflowService(session, rt, principal).get(workflow_id)
    return DeliveryService(session, principal, rt.settings.webhooks).redeliver(delivery_id, workflow_id=workflow_id)


SIGNED_HEADERS = (
    "Headers (Standard Webhooks): `webhook-id` (the same on every attempt: dedupe on it), `webhook-timestamp` "
    '(Unix seconds of this attempt), `webhook-signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, '
    "one per configured secret, space-separated). Answer 2xx to acknowledge; anything else is retried with "
    "exponential backoff and jitter for `ATELIER_WEBHOOKS__RETRY_WINDOW_SECONDS` (410 Gone stops at once). "
    "Events of one task arrive in order; `metadata.sequence` increases."
)


def document_webhooks(app: FastAPI) -> None:
    """Describe the webhook requests this service sends in the OpenAPI document (``webhooks`` section)."""
    bodies: list[tuple[str, type[BaseEvent], str]] = [
        ("task-created", TaskCreatedEvent, "A task was accepted (`event_type` TASK_CREATED)."),
        ("task-status", TaskStatusEvent, "A task changed status (`event_type` TASK_STATUS)."),
        ("inference-status", InferenceStatusEvent, "An image task finished (`event_type` INFERENCE_STATUS)."),
        ("training-status", TrainingStatusEvent, "A training changed status (`event_type` TRAINING_STATUS)."),
        (
            "preprocessing-status",
            PreprocessingStatusEvent,
            "A training's preprocessing progressed (`event_type` PREPROCESSING_STATUS).",
        ),
        ("workflow-status", WorkflowStatusEvent, "A workflow finished (`event_type` WORKFLOW_STATUS)."),
    ]
    for name, model, summary in bodies:

        def receiver(body: BaseEvent) -> None:
            """Sent to the `webhook_url`."""

        receiver.__annotations__ = {"body": model, "return": None}
        app.webhooks.add_api_route(
            f"/{name}", receiver, methods=["POST"], summary=summary, description=SIGNED_HEADERS, name=name
        )
