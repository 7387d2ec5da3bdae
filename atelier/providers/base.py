"""The provider plugin contract: a config model, the task types it serves, and ``run(ctx)``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx
from PIL import Image
from pydantic import BaseModel

from atelier.core.inputs import FetchLimits
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType


class ProviderError(Exception):
    """Base of the errors a provider raises deliberately; ``category`` ends up in ``error_category``."""

    category: ErrorCategory = ErrorCategory.PROVIDER_ERROR
    # True when the remote job behind ``ctx.remote_id`` is dead: the next attempt must submit a new one.
    discard_remote: bool = False

    def __init__(self, message: str, *, category: ErrorCategory | None = None) -> None:
        super().__init__(message)
        if category is not None:
            self.category = category


class ProviderRetryableError(ProviderError):
    """A transient failure (timeout, 429, 5xx): retry with backoff, ``retry_after`` seconds if known."""

    def __init__(self, message: str, *, retry_after: float | None = None, category: ErrorCategory | None = None):
        super().__init__(message, category=category)
        self.retry_after = retry_after


class ProviderFatalError(ProviderError):
    """A failure that retrying the same provider cannot fix; the fallback provider may still run."""


class ProviderNotAvailableError(ProviderFatalError):
    """No implementation is registered for this provider type and task type."""

    category = ErrorCategory.PROVIDER_NOT_AVAILABLE


class TaskCancelledError(Exception):
    """Raised by ``ctx.check_cancelled()`` when the task's cancel flag is set."""


@dataclass
class ProviderResult:
    """Type-specific outputs to merge into the task (e.g. ``result_image_path``)."""

    outputs: dict[str, Any]
    service_task_id: str | None = None


@dataclass
class ProviderContext:
    """Everything one run may use; the engine builds it, the provider never reaches for globals."""

    task_id: uuid.UUID
    task_type: TaskType
    inputs: dict[str, Any]
    config: BaseModel
    capabilities: list[str]
    task_config: dict[str, Any]
    storage: TenantStorage
    output_prefix: str
    attempt: int
    http: httpx.Client
    # (source, field name, optional JPEG shrink-on-load request) -> fully decoded image
    load_image: Callable[..., Image.Image]
    progress: Callable[[float], None]
    check_cancelled: Callable[[], None]
    log_request: Callable[[dict[str, Any]], None]
    # The remote job id a previous attempt of this provider saved (a resumed task polls it, never resubmits).
    remote_id: str | None = None
    # Persist the remote job id at once (and into ``config_field`` of the provider config, e.g. fal_request_id).
    save_remote_id: Callable[[str, str | None], None] = field(default=lambda remote_id, config_field: None)
    fetch_limits: FetchLimits | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def output_path(self, name: str) -> str:
        """Storage path for an output file of this task."""
        return f"{self.output_prefix}/{name}"


class Provider(Protocol):
    """A provider plugin. Instances are stateless; per-call configuration arrives in ``ctx.config``."""

    provider_type: ClassVar[ProviderType]
    task_types: ClassVar[frozenset[TaskType]]

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Do the work; raise ProviderRetryableError/ProviderFatalError/InvalidInputError on failure."""
        ...
