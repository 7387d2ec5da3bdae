"""``GET /v2/status/{request_id}`` (Bria status service) and ``GET /v1/jobs/{id}`` (job status)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from atelier.core.auth import Principal
from atelier.core.deps import RuntimeDep, StatusPrincipalDep
from atelier.core.errors import NotFoundError
from atelier.core.runtime import Runtime
from atelier.status.views import v1_job, v2_status
from atelier.storage.service import TenantStorage
from atelier.tasks.service import read_task
from atelier.tasks.views import base_url, to_public

router = APIRouter(tags=["Status"])


def _find(runtime: Runtime, principal: Principal, raw_id: str) -> SimpleNamespace | None:
    try:
        task = read_task(runtime, principal, uuid.UUID(raw_id))
    except (ValueError, NotFoundError):
        return None
    return None if task.is_deleted else task


@router.get(
    "/v2/status/{request_id}",
    summary="Get Request Status",
    operation_id="get_status",
    responses={
        404: {
            "description": "request_id unknown or expired",
            "content": {"application/json": {"example": {"status": "NOT_FOUND"}}},
        }
    },
)
async def get_status(request_id: str, rt: RuntimeDep, principal: StatusPrincipalDep, request: Request) -> JSONResponse:
    """IN_PROGRESS / COMPLETED (with result) / ERROR (with error) — always 200 for a known request."""
    base = base_url(rt, request)

    def view() -> dict[str, Any] | None:
        task = _find(rt, principal, request_id)
        return None if task is None else v2_status(task, TenantStorage(rt.storage, principal.tenant), base)

    body = await run_in_threadpool(view)
    if body is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    return JSONResponse(body)


@router.get("/v1/jobs/{id}", summary="Get generation job status")
async def get_job(id: str, rt: RuntimeDep, principal: StatusPrincipalDep, request: Request) -> JSONResponse:
    """pending / processing / completed (with result) / failed (with error)."""
    base = base_url(rt, request)

    def view() -> dict[str, Any]:
        task = _find(rt, principal, id)
        if task is None:
            raise NotFoundError(f"job {id} not found")
        public = to_public(task, base).model_dump(mode="json")
        return v1_job(task, TenantStorage(rt.storage, principal.tenant), base, public)

    return JSONResponse(await run_in_threadpool(view))
