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
    path = request.url.path
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

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise _BodyTooLargeError()
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
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
