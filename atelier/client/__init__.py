"""The Python SDK of Atelier Compute: typed sync and async clients, the exception tree, webhook verification.

>>> from atelier.client import Client
>>> with Client() as client:  # ATELIER_URL / ATELIER_TOKEN from the environment
...     task = client.tasks.create("IMAGE_ADJUSTER", input_image="data:image/png;base64,…", aspect_ratio="4:5")
...     task = client.tasks.wait(task.id, timeout=120)
...     png = client.storage.download(task.result_image_path)
"""

from __future__ import annotations

from atelier.client._async import AsyncClient
from atelier.client._base import RetryPolicy
from atelier.client._sync import Client
from atelier.client.errors import (
    APIConnectionError,
    APIStatusError,
    AtelierError,
    AuthenticationError,
    BadRequest,
    Conflict,
    Gone,
    InternalServerError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    TaskFailed,
    TimeoutError,
    UnprocessableEntity,
    WebhookVerificationError,
)
from atelier.client.models import (
    Task,
    TaskEvent,
    TaskStatus,
    TaskType,
    TrainingTask,
    WaitProgress,
    Workflow,
    WorkflowStatus,
)
from atelier.client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AsyncClient",
    "AtelierError",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "Gone",
    "InternalServerError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "Task",
    "TaskEvent",
    "TaskFailed",
    "TaskStatus",
    "TaskType",
    "TimeoutError",
    "TrainingTask",
    "UnprocessableEntity",
    "WaitProgress",
    "WebhookVerificationError",
    "Workflow",
    "WorkflowStatus",
    "verify_webhook",
]
