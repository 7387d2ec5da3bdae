"""``GET /v2/status/{request_id}`` (Bria status service) and ``GET /v1/jobs/{id}`` (job status)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from atelier.core.deps import RuntimeDep, SessionDep, StatusPrincipalDep
from atelier.core.errors import NotFoundError
from atelier.status.views import v1_job, v2_status
from atelier.storage.service import TenantStorage
from atelier.tasks import repository
from atelier.tasks.models import Task
from atelier.tasks.views import base_url, to_public

router = APIRouter(tags=["Status"])


def _find(session: Any, tenant: str, raw_id: str) -> Task | None:
    try:
        task_id = uuid.UUID(raw_id)
    except ValueError:
        return None
    task = repository.get_for_tenant(session, tenant, task_id)
    return None if task is None or task.is_deleted else task


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
def get_status(
    request_id: str, session: SessionDep, rt: RuntimeDep, principal: StatusPrincipalDep, request: Request
) -> JSONResponse:
    """IN_PROGRESS / COMPLETED (with result) / ERROR (with error) — always 200 for a known request."""
    task = _find(session, principal.tenant, request_id)
    if task is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    storage = TenantStorage(rt.storage, principal.tenant)
    return JSONResponse(v2_status(task, storage, base_url(rt, request)))


@router.get("/v1/jobs/{id}", summary="Get generation job status")
def get_job(
    id: str, session: SessionDep, rt: RuntimeDep, principal: StatusPrincipalDep, request: Request
) -> JSONResponse:
    """pending / processing / completed (with result) / failed (with error)."""
    task = _find(session, principal.tenant, id)
    if task is None:
        raise NotFoundError(f"job {id} not found")
    base = base_url(rt, request)
    public = to_public(task, base).model_dump(mode="json")
    return JSONResponse(v1_job(task, TenantStorage(rt.storage, principal.tenant), base, public))
