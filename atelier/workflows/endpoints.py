"""HTTP endpoints of the Workflows API."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from atelier.core import idempotency
from atelier.core.auth import Principal
from atelier.core.db import session_scope
from atelier.core.deps import PrincipalDep, RuntimeDep, SessionDep
from atelier.core.idempotency import IdempotencyKeyHeader
from atelier.core.runtime import Runtime
from atelier.tasks import events_stream
from atelier.workflows.planner import WorkflowStatus
from atelier.workflows.schemas import (
    CreateWorkflow,
    WorkflowCleanupResponse,
    WorkflowListResponse,
    WorkflowPublic,
    WorkflowUpdate,
)
from atelier.workflows.service import WorkflowService, public

router = APIRouter(prefix="/api/v1/workflows", tags=["workflows"])
CREATE_ENDPOINT = "POST /api/v1/workflows/"


@router.post("/", summary="Create Workflow")
async def create_workflow(
    body: CreateWorkflow,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    start: Annotated[bool, Query(description="Start the workflow immediately")] = True,
    idempotency_key: IdempotencyKeyHeader = None,
    prefer: events_stream.PreferHeader = None,
    sync: events_stream.SyncQuery = False,
) -> WorkflowPublic:
    """Create a workflow from a DAG of steps (validated whole: nothing is written on refusal); starts it by default.

    With an ``Idempotency-Key`` already used for the same request (body and ``start``), the first request's workflow
    is answered as it is now (header ``Idempotent-Replayed: true``) and nothing is created. With ``Prefer: wait=N``
    (or ``sync=true``) the answer waits for the workflow to finish, as for tasks.
    """

    def submit() -> WorkflowPublic:  # the create as a sync unit of work, in the thread pool
        service = WorkflowService(session, rt, principal)
        claim = idempotency.claim(
            session,
            principal,
            idempotency_key,
            endpoint=CREATE_ENDPOINT,
            resource_type="workflow",
            body=body,
            query={"start": start},
            ttl_seconds=rt.settings.tasks.idempotency_ttl_seconds,
        )
        if claim.replay is not None:
            workflow = claim.replayed(service.get, response)
        else:
            workflow = service.create(body, start=start)
            claim.bind(workflow.id)
        session.commit()  # the root steps' tasks are published after this commit; a wait below holds nothing
        return public(workflow)

    created = await run_in_threadpool(submit)
    wait = events_stream.requested_wait(request, rt.settings.server.max_sync_wait_seconds, sync=sync)
    if wait is None or not start:
        return created
    finished = is_finished(created)
    if not finished:
        workflow_id = created.id

        def read() -> WorkflowPublic:
            return read_workflow(rt, principal, workflow_id)

        waited = await events_stream.wait_until(read, is_finished, request, wait)
        created, finished = waited[0] or created, waited[1]
    if finished:
        response.headers[events_stream.PREFERENCE_APPLIED] = f"wait={wait}"
    return created


WORKFLOW_FINISHED = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})


def is_finished(workflow: WorkflowPublic) -> bool:
    """Whether the workflow reached a final status."""
    return workflow.status in WORKFLOW_FINISHED


def read_workflow(rt: Runtime, principal: Principal, workflow_id: uuid.UUID) -> WorkflowPublic:
    """The workflow as it is now, read in a session of its own (for waits outside the request's unit of work)."""
    with session_scope(rt.sessions) as session:
        return public(WorkflowService(session, rt, principal).get(workflow_id))


@router.get("/", summary="List Workflows")
def list_workflows(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Maximum number of workflows to return")] = 50,
    skip: Annotated[int, Query(ge=0, le=2**31 - 1, description="Number of workflows to skip")] = 0,  # 64-bit OFFSET
    status: Annotated[WorkflowStatus | None, Query(description="Filter by status")] = None,
    origin_instance: Annotated[str | None, Query(description="Filter by origin instance")] = None,
    origin_tenant_id: Annotated[str | None, Query(description="Filter by origin tenant ID")] = None,
    include_deleted: Annotated[bool, Query(description="Include soft-deleted workflows")] = False,
) -> WorkflowListResponse:
    """Workflows newest first, with their steps."""
    rows, total = WorkflowService(session, rt, principal).list(
        limit=limit,
        skip=skip,
        status=status,
        origin_instance=origin_instance,
        origin_tenant_id=origin_tenant_id,
        include_deleted=include_deleted,
    )
    return WorkflowListResponse(workflows=[public(w) for w in rows], total=total, skip=skip, limit=limit)


@router.get("/{workflow_id}", summary="Get Workflow")
def get_workflow(
    workflow_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowPublic:
    """A workflow with all its steps and their status (topological order)."""
    return public(WorkflowService(session, rt, principal).get(workflow_id))


@router.patch("/{workflow_id}", summary="Update Workflow")
def update_workflow(
    workflow_id: uuid.UUID, body: WorkflowUpdate, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowPublic:
    """Change name, description or webhook_url (nothing else can change)."""
    return public(WorkflowService(session, rt, principal).update(workflow_id, body))


@router.delete("/{workflow_id}", summary="Cancel Workflow")
def cancel_workflow(
    workflow_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowPublic:
    """Cancel a PENDING or RUNNING workflow: running step tasks are cancelled, pending steps never start."""
    return public(WorkflowService(session, rt, principal).cancel(workflow_id))


@router.post("/{workflow_id}/start", summary="Start Workflow")
def start_workflow(
    workflow_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowPublic:
    """Start a PENDING workflow."""
    workflow = WorkflowService(session, rt, principal).start(workflow_id)
    session.commit()
    return public(workflow)


@router.post("/{workflow_id}/resume", summary="Resume Workflow")
def resume_workflow(
    workflow_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowPublic:
    """Resume a FAILED or PAUSED workflow: unfinished steps are reset, completed ones kept."""
    workflow = WorkflowService(session, rt, principal).resume(workflow_id)
    session.commit()
    return public(workflow)


@router.post("/{workflow_id}/cleanup", summary="Cleanup Workflow")
def cleanup_workflow(
    workflow_id: uuid.UUID,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    cleanup_tasks: Annotated[bool, Query(description="Also delete the step tasks' files and soft-delete them")] = True,
) -> WorkflowCleanupResponse:
    """Soft-delete the workflow (hidden from lists unless include_deleted=true)."""
    return WorkflowService(session, rt, principal).cleanup(workflow_id, cleanup_tasks=cleanup_tasks)
