"""FastAPI dependencies: runtime, unit-of-work session and the authenticated principal."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from atelier.core.auth import Principal, decode_token
from atelier.core.db import session_scope
from atelier.core.errors import AuthError
from atelier.core.runtime import Runtime

T = TypeVar("T")
SQLITE_READ_THREADS = 4

bearer_scheme = HTTPBearer(auto_error=False, description="JWT Bearer token")


# Cheap dependencies are ``async def`` so they run on the event loop instead of hopping to the thread pool.
async def get_runtime(request: Request) -> Runtime:
    """The runtime built by the app's lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One unit of work per request: commit when the endpoint returns, roll back if it raises."""
    with session_scope(runtime.sessions) as session:
        yield session


# scope="function": commit (and publish) before the response is sent, so a client that polls right away
# sees its row and a failed commit is an error response, not a lost task.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def get_principal(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    """Verify the bearer token (401 with the reason when absent or invalid)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing bearer token (Authorization: Bearer <jwt>)")
    return decode_token(runtime.settings.auth, credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def json_response(model: BaseModel) -> Response:
    """Serialise a read model once (FastAPI would validate it again against the declared response model)."""
    return Response(content=model.model_dump_json(), media_type="application/json")


async def get_status_principal(
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_token: Annotated[
        str | None, Header(convert_underscores=False, description="The JWT, as the Bria status API sends it")
    ] = None,
) -> Principal:
    """Status surfaces accept the JWT as a bearer token or in the ``api_token`` header."""
    token = credentials.credentials if credentials else api_token
    if not token:
        raise AuthError("missing credentials (Authorization: Bearer <jwt> or api_token header)")
    return decode_token(runtime.settings.auth, token)


StatusPrincipalDep = Annotated[Principal, Depends(get_status_principal)]


def read_executor(runtime: Runtime) -> ThreadPoolExecutor | None:
    """The hot reads' own threads (``server.read_threads``), or None for the shared threadpool.

    On SQLite a read is in-process CPU work that holds the GIL but for the statement itself. With the shared
    threadpool's 40 threads, concurrent requests become 40 threads taking turns at the GIL, and the event loop,
    which parses requests and writes responses, waits its turn behind them: a task read ran at 0.45x a bare
    FastAPI read. Four threads of its own: about 0.7x (``bench.run status``). PostgreSQL reads wait on the network,
    so many threads are what they need.
    """
    threads = runtime.settings.server.read_threads
    if threads is None and runtime.engine.dialect.name == "sqlite":
        threads = SQLITE_READ_THREADS
    return None if threads is None else ThreadPoolExecutor(threads, thread_name_prefix="atelier-read")


async def run_read(request: Request, read: Callable[[], T]) -> T:
    """Run a hot read off the event loop: on the app's read threads when it has them, else the threadpool."""
    executor: ThreadPoolExecutor | None = request.app.state.read_executor
    if executor is None:
        return await run_in_threadpool(read)
    context = contextvars.copy_context()  # as the threadpool does: request-scoped context vars reach the read
    return await asyncio.get_running_loop().run_in_executor(executor, context.run, read)
