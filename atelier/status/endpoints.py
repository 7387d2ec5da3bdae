"""``GET /v2/status/{request_id}`` (Bria status service) and ``GET /v1/jobs/{id}`` (job status)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from atelier.core.auth import Principal
from atelier.core.db import session_scope
from atelier.core.deps import RuntimeDep, StatusPrincipalDep, run_read
from atelier.core.errors import NotFoundError
from atelier.core.runtime import Runtime
from atelier.status.views import v1_job, v2_status, workflow_v1_job, workflow_v2_status
from atelier.storage.service import TenantStorage
from atelier.tasks.lifetimes import check_not_expired
from atelier.tasks.service import read_task
from atelier.tasks.views import base_url, to_public
from atelier.workflows.models import Workflow

router = APIRouter(tags=["Status"])


def _find(runtime: Runtime, principal: Principal, raw_id: str) -> SimpleNamespace | None:
    try:
        task = read_task(runtime, principal, uuid.UUID(raw_id))
    except (ValueError, NotFoundError):
        return None
    return None if task.is_deleted else task


def _find_workflow(runtime: Runtime, principal: Principal, raw_id: str) -> Workflow | None:
    """A workflow id is a job too (its steps are the scenes)."""
    try:
        workflow_id = uuid.UUID(raw_id)
    except ValueError:
        return None
    with session_scope(runtime.sessions) as session:
        workflow = session.scalars(
            select(Workflow).where(
                Workflow.id == workflow_id, Workflow.tenant_id == principal.tenant, Workflow.is_deleted.is_(False)
            )
        ).first()
        if workflow is not None:
            session.expunge(workflow)
        return workflow


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
        storage = TenantStorage(rt.storage, principal.tenant)
        task = _find(rt, principal, request_id)
        if task is not None:
            check_not_expired(task)
            return v2_status(task, storage, base)
        workflow = _find_workflow(rt, principal, request_id)
        return None if workflow is None else workflow_v2_status(workflow, storage, base)

    body = await run_read(request, view)
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
            workflow = _find_workflow(rt, principal, id)
            if workflow is None:
                raise NotFoundError(f"job {id} not found")
            return workflow_v1_job(workflow, TenantStorage(rt.storage, principal.tenant), base)
        check_not_expired(task)
        public = to_public(task, base).model_dump(mode="json")
        return v1_job(task, TenantStorage(rt.storage, principal.tenant), base, public)

    return JSONResponse(await run_read(request, view))
