"""Error rendering per API surface, request-body limits and request ids."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atelier.core.errors import AtelierError, InvalidInputError, RateLimitedError, ServiceUnavailableError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def _surface(request: Request) -> str:
    return _surface_of(request.url.path)


def _surface_of(path: str) -> str:
    if path.startswith("/v2/status"):
        return "bria"
    if path.startswith("/v1/jobs"):
        return "jobs"
    return "compute"


def render(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any,
    loc: tuple[Any, ...] = (),
    retry_after: int | None = None,
) -> JSONResponse:
    """One error, in the envelope of the surface the request hit."""
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    if retry_after is not None:
        headers = {"Retry-After": str(retry_after)}
    surface = _surface(request)
    if surface == "bria":
        body: Any = {
            "error": {"code": status, "message": message, "details": str(details or code)},
            "request_id": request.path_params.get("request_id", _request_id(request)),
        }
    elif surface == "jobs":
        body = {"error": code, "message": message, "request_id": _request_id(request), "details": details}
    elif status == 422:
        body = {"detail": [{"type": code, "loc": list(loc), "msg": message, "ctx": {"details": details}}]}
    else:
        body = {"detail": message, "code": code}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


async def _atelier_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtelierError)
    loc = exc.loc if isinstance(exc, InvalidInputError) else ()
    retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
    return render(request, exc.http_status, exc.code, exc.message, exc.details, loc, retry_after)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if _surface(request) == "compute":
        return JSONResponse(jsonable_encoder({"detail": exc.errors()}), status_code=422)
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
    return render(request, 422, "validation_error", str(first.get("msg")), exc.errors())


async def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable: %s", exc)
    err = ServiceUnavailableError("the database is unavailable; retry shortly")
    return render(request, err.http_status, err.code, err.message, None)


def install_error_handlers(app: FastAPI) -> None:
    """Map the error base, validation errors and DB outages to responses."""
    app.add_exception_handler(AtelierError, _atelier_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _db_unavailable)


# The error bodies ``render`` writes, per surface (the compute surface's 422 is FastAPI's HTTPValidationError).
_ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "compute": {
        "title": "ErrorBody",
        "type": "object",
        "required": ["detail"],
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
    },
    "bria": {
        "title": "BriaErrorBody",
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "integer"},
                    "message": {"type": "string"},
                    "details": {"type": "string"},
                },
            },
            "request_id": {"type": "string"},
        },
    },
    "jobs": {
        "title": "JobsErrorBody",
        "type": "object",
        "required": ["error", "message", "request_id"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "request_id": {"type": "string"},
            "details": {},
        },
    },
}

_ERROR_DESCRIPTIONS = {
    400: "The request body could not be parsed",
    401: "Missing, malformed, expired or wrongly signed token",
    403: "The token's role may not do this (viewer writing, non-admin on an admin operation)",
    404: "Unknown id or path, or one of another tenant",
    409: "Conflict with the current state (illegal transition, reused idempotency key)",
    410: "The task expired (retention): its record and files are gone",
    413: "Request body too large",
    422: "Validation error",
    429: "Rate or active-task limit of the tenant reached (see Retry-After)",
    503: "A backend (database, broker, storage, evaluation backend) is unavailable; retry (see Retry-After)",
}


def _error_codes(method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses the handlers above can give for an operation (401/403/503 need a token, so a backend)."""
    if not operation.get("security"):
        return {413}  # public (e.g. /health): only the body-size limit applies
    codes = {401, 403, 413, 503}
    located = {param.get("in") for param in operation.get("parameters", [])}
    writes = method not in ("get", "head")
    if method == "delete":
        codes.add(404)  # also the deletes that name their target in the body (LoRA files)
    if "path" in located:
        codes |= {404, 410} | ({409} if writes else set())
    elif method == "post":
        codes |= {409, 429}  # creates: idempotency conflicts and admission limits
    if "requestBody" in operation:
        codes |= {400, 422}
    if located:
        codes.add(422)
    return codes


def _add_error_responses(document: dict[str, Any]) -> None:
    for path, item in document.get("paths", {}).items():
        surface = _surface_of(path)
        for method, operation in item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head") or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_codes(method, operation)):
                if str(status) in responses or (status == 422 and surface == "compute"):
                    continue  # declared by the endpoint / FastAPI's own HTTPValidationError
                responses[str(status)] = {
                    "description": _ERROR_DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": _ERROR_SCHEMAS[surface]}},
                }
            if surface != "compute" and "422" in responses:
                # RequestValidationError on the status surfaces is rendered in their envelope (``_validation_error``)
                responses["422"] = {
                    "description": _ERROR_DESCRIPTIONS[422],
                    "content": {"application/json": {"schema": _ERROR_SCHEMAS[surface]}},
                }


def document_error_responses(app: FastAPI) -> None:
    """Declare the error responses of every operation in the OpenAPI document, in its surface's envelope.

    Responses an endpoint declares itself are kept (except the status surfaces' 422, which ``_validation_error``
    renders in their own envelope, not as FastAPI's HTTPValidationError).
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _add_error_responses(build())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


class BodySizeLimit:
    """Refuse request bodies above ``max_bytes`` (413) while they stream, before they are spooled to disk.

    ``path_limits`` gives exact paths their own limit (the LoRA uploads take files far larger than images).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._too_large(send)
            return
        seen = 0
        exceeded = started = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                exceeded = True
                raise _BodyTooLargeError()
            return message

        # FastAPI turns any exception raised while it reads the body into its own 400 ("error parsing the body"),
        # so the error may never reach us: once the limit was hit, the app's answer is replaced by the 413.
        async def guarded(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not exceeded or started:
                raise  # a failure of its own: not ours to answer
        if exceeded and not started:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = b'{"detail":"request body too large","code":"payload_too_large"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLargeError(Exception):
    pass
