"""The SDK's exception tree: every error the client raises is an ``AtelierError``.

::

    AtelierError
    ├── APIStatusError            the server answered with an error status (``status_code``, ``body``, ``request_id``)
    │   ├── BadRequest            400 (and any other 4xx without its own class)
    │   ├── AuthenticationError   401
    │   ├── PermissionDenied      403
    │   ├── NotFound              404
    │   ├── Conflict              409
    │   ├── Gone                  410 (a task past its retention)
    │   ├── UnprocessableEntity   422
    │   ├── RateLimited           429 (``retry_after`` seconds)
    │   ├── ServiceUnavailable    503 (``retry_after`` seconds)
    │   └── InternalServerError   500 and other 5xx
    ├── APIConnectionError        no answer: connection refused, reset, DNS, request timeout
    ├── TimeoutError              a wait ran out of time (also a builtin ``TimeoutError``)
    ├── TaskFailed                ``wait(..., raise_on_failure=True)`` saw FAILED/CANCELLED
    └── WebhookVerificationError  ``verify_webhook`` refused a payload (bad signature, stale timestamp)
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

import httpx

from atelier.core.time import retry_after_seconds as parse_retry_after

if TYPE_CHECKING:
    from atelier.client.models import Task

REQUEST_ID_HEADER = "X-Request-ID"


class AtelierError(Exception):
    """Base class of every error raised by ``atelier.client``."""


class APIStatusError(AtelierError):
    """The server answered with a 4xx/5xx status."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any, request_id: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.response = response
        self.status_code = response.status_code
        self.body = body
        self.request_id = request_id
        self.code: str | None = body.get("code") if isinstance(body, dict) else None

    def __str__(self) -> str:
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status_code}: {self.message}{rid}"


class BadRequest(APIStatusError):  # noqa: N818 - named after the HTTP status, like httpx/openai SDKs
    """400, or another 4xx without its own class."""


class AuthenticationError(APIStatusError):
    """401: missing, invalid or expired token."""


class PermissionDenied(APIStatusError):  # noqa: N818
    """403: the token's role may not do this (e.g. a viewer writing)."""


class NotFound(APIStatusError):  # noqa: N818
    """404: no such resource for this tenant."""


class Conflict(APIStatusError):  # noqa: N818
    """409: the resource is not in a state that allows this (e.g. cancelling a finished task)."""


class Gone(APIStatusError):  # noqa: N818
    """410: the task is past its retention (``code`` ``expired``)."""


class UnprocessableEntity(APIStatusError):  # noqa: N818
    """422: the request failed validation (``body["detail"]`` lists the errors)."""


class RateLimited(APIStatusError):  # noqa: N818
    """429: over a tenant limit; ``retry_after`` is the server's ``Retry-After`` in seconds (or None)."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any, request_id: str | None) -> None:
        super().__init__(message, response=response, body=body, request_id=request_id)
        self.retry_after = retry_after_seconds(response)


class ServiceUnavailable(APIStatusError):  # noqa: N818
    """503: the database or broker is unreachable; nothing was done. ``retry_after`` as for ``RateLimited``."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any, request_id: str | None) -> None:
        super().__init__(message, response=response, body=body, request_id=request_id)
        self.retry_after = retry_after_seconds(response)


class InternalServerError(APIStatusError):
    """500 and any other 5xx."""


class APIConnectionError(AtelierError):
    """The request got no answer (connection refused or reset, DNS failure, network timeout)."""


class TimeoutError(AtelierError, builtins.TimeoutError):  # also the builtin, so `except TimeoutError` works
    """A wait (``tasks.wait``, ``workflows.wait``, ``training.wait``) ran out of time; the work goes on."""


class TaskFailed(AtelierError):  # noqa: N818
    """A waited-for task ended FAILED or CANCELLED (only with ``raise_on_failure=True``)."""

    def __init__(self, task: Task) -> None:
        errors = "; ".join(task.errors or []) or task.error_category or "no error message"
        super().__init__(f"task {task.id} {task.status}: {errors}")
        self.task = task


class WebhookVerificationError(AtelierError):
    """A webhook's signature did not verify, or its timestamp is outside the tolerance window."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: UnprocessableEntity,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    return parse_retry_after(response.headers.get("retry-after"))


def _message(body: Any, response: httpx.Response) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for error in detail:
            if isinstance(error, dict):
                loc = ".".join(str(p) for p in error.get("loc", []))
                parts.append(f"{loc}: {error.get('msg')}" if loc else str(error.get("msg")))
        return "; ".join(parts) or "validation error"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.reason_phrase or f"HTTP {response.status_code}"


def error_for(response: httpx.Response) -> APIStatusError:
    """The exception for an error response (the body is parsed as JSON when it is JSON)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    request_id = response.headers.get(REQUEST_ID_HEADER) or response.request.headers.get(REQUEST_ID_HEADER)
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else BadRequest)
    return cls(_message(body, response), response=response, body=body, request_id=request_id)
