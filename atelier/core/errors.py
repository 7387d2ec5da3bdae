"""One error base for the service; each API surface renders it in its own envelope."""

from __future__ import annotations

from typing import Any


class AtelierError(Exception):
    """Base of every business error: a machine code, an HTTP status and a human message."""

    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(AtelierError):
    """The object does not exist or belongs to another tenant."""

    code = "not_found"
    http_status = 404


class ConflictError(AtelierError):
    """The request is valid but illegal in the object's current state."""

    code = "conflict"
    http_status = 409


class AuthError(AtelierError):
    """Missing, malformed, expired or wrongly signed credentials."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(AtelierError):
    """Valid credentials without the role the operation needs."""

    code = "forbidden"
    http_status = 403


class PayloadTooLargeError(AtelierError):
    """An upload or fetched input exceeds the configured bounds."""

    code = "payload_too_large"
    http_status = 413


class GoneError(AtelierError):
    """The object existed but its retention period is over: its results were purged."""

    code = "expired"
    http_status = 410


class RateLimitedError(AtelierError):
    """The tenant is over a rate limit or concurrency cap; retry after ``retry_after`` seconds."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = max(1, int(retry_after + 0.999))


class ServiceUnavailableError(AtelierError):
    """A dependency (database, broker, storage) is unreachable; the client may retry later."""

    code = "service_unavailable"
    http_status = 503


class InvalidInputError(AtelierError, ValueError):
    """Input that passed schema validation but is still unusable (bad image, unsafe URL, missing file).

    It is a ``ValueError`` so that providers raising it are never retried. ``loc`` names the offending
    field the way FastAPI's validation errors do, so the API renders it in the same 422 shape.
    """

    code = "invalid_input"
    http_status = 422

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = (), details: Any = None) -> None:
        super().__init__(message, details=details)
        self.loc = loc


class UnsafeURLError(InvalidInputError):
    """A URL points at a private, loopback or otherwise disallowed address."""

    code = "unsafe_url"


class InputTooLargeError(InvalidInputError):
    """An input image is larger than the configured byte or pixel limit."""

    code = "input_too_large"
