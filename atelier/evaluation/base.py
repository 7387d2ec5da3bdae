"""The contract between the evaluation service and its backends, and the errors backends raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx
from PIL import Image

from atelier.core.errors import ServiceUnavailableError
from atelier.core.inputs import FetchLimits
from atelier.evaluation.schemas import EvaluationProvider, EvaluationRequest, EvaluationResponse
from atelier.storage.service import TenantStorage


class BackendUnavailableError(ServiceUnavailableError):
    """The backend could not answer (not configured, unreachable, 5xx, rejected credentials): a 503."""

    code = "evaluation_backend_unavailable"


class MalformedAnswerError(Exception):
    """The backend answered, but not in the expected shape (after its bounded retries)."""


class RefusedError(Exception):
    """The backend works but declined to evaluate this image (e.g. a content-policy refusal)."""


@dataclass(frozen=True)
class CallContext:
    """What one request lends a backend: the process's HTTP client, input limits and the caller's storage."""

    http: httpx.Client
    fetch_limits: FetchLimits
    storage: TenantStorage


class EvaluationBackend(Protocol):
    """One way to evaluate a shot. ``evaluate`` fills what it can determine and leaves the rest None."""

    @property
    def provider(self) -> EvaluationProvider:
        """The ``provider`` value that selects this backend."""
        ...

    def unavailable_reason(self) -> str | None:
        """Why the backend cannot run at all (missing credentials, missing detector files), or None."""
        ...

    def evaluate(self, image: Image.Image, request: EvaluationRequest, call: CallContext) -> EvaluationResponse:
        """Analyse ``image`` (RGB, already bounded in size); raise the errors above on failure."""
        ...
