"""HTTP endpoints of the Tasks API (including the generation-task endpoints)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from atelier.core import idempotency
from atelier.core.deps import PrincipalDep, RuntimeDep, SessionDep, json_response, run_read
from atelier.core.errors import NotFoundError
from atelier.core.idempotency import IdempotencyKeyHeader
from atelier.tasks import events_stream
from atelier.tasks.enums import TERMINAL_STATUSES, TaskStatus, TaskType
from atelier.tasks.repository import TaskFilters
from atelier.tasks.schemas import (
    GenerationTaskPublic,
    GenerationTaskUpdate,
    TaskCleanupResponse,
    TaskCreate,
    TaskPublic,
    TaskPublicBase,
    TaskUpdate,
)
from atelier.tasks.service import TaskService, read_task
from atelier.tasks.views import base_url, status_url, to_public

router = APIRouter(prefix="/api/v1/tasks", tags=["Tasks"])
CREATE_ENDPOINT = "POST /api/v1/tasks/"

Limit = Annotated[int, Query(ge=1, le=1000, description="Maximum number of tasks to return")]
# Bounded: an OFFSET beyond a 64-bit integer overflowed the database driver (500).
Skip = Annotated[int, Query(ge=0, le=2**31 - 1, description="Number of tasks to skip")]
StatusQ = Annotated[TaskStatus | None, Query(description="Filter by status")]
OriginInstance = Annotated[str | None, Query(description="Filter by origin instance")]
OriginZone = Annotated[str | None, Query(description="Filter by origin zone")]
OriginTenant = Annotated[str | None, Query(description="Filter by origin tenant ID")]
LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias=events_stream.LAST_EVENT_ID,
        description="Resume after this event id (the `id:` of the last frame received; EventSource sends it when it "
        "reconnects). Absent or not an event id: the stream starts with the task's first event.",
    ),
]


def _generation(model: TaskPublicBase) -> GenerationTaskPublic:
    assert isinstance(model, GenerationTaskPublic)
    return model


# The literal /generation routes are declared before /{task_id} so the path parameter cannot capture them.


@router.put("/generation/{task_id}", summary="Update Generation Task")
def update_generation_task(
    task_id: uuid.UUID,
    body: GenerationTaskUpdate,
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
) -> GenerationTaskPublic:
    """Update a generation task."""
    task = TaskService(session, rt, principal).update(task_id, body, task_type=TaskType.GENERATION)
    return _generation(to_public(task, base_url(rt, request)))


@router.get("/generation/{task_id}", summary="Get Generation Task", response_model=GenerationTaskPublic)
async def get_generation_task(
    task_id: uuid.UUID, rt: RuntimeDep, principal: PrincipalDep, request: Request
) -> Response:
    """Get a generation task by ID."""
    base = base_url(rt, request)  # hot path: one thread hop, Core read, pre-serialised response
    model = await run_read(
        request, lambda: to_public(read_task(rt, principal, task_id, TaskType.GENERATION, with_estimate=True), base)
    )
    return json_response(model)


@router.get("/generation", summary="List Generation Tasks")
def list_generation_tasks(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
    limit: Limit = 100,
    skip: Skip = 0,
    status: StatusQ = None,
    workflow_id: Annotated[str | None, Query(description="Filter by workflow ID")] = None,
    origin_instance: OriginInstance = None,
    origin_zone: OriginZone = None,
    origin_tenant_id: OriginTenant = None,
) -> list[GenerationTaskPublic]:
    """List generation tasks, newest first."""
    filters = TaskFilters(status, TaskType.GENERATION, origin_instance, origin_zone, origin_tenant_id, workflow_id)
    base = base_url(rt, request)
    return [
        _generation(to_public(t, base))
        for t in TaskService(session, rt, principal).find(filters, limit=limit, skip=skip)
    ]


@router.post("/generation/{task_id}/cancel", summary="Cancel Generation Task")
def cancel_generation_task(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep, request: Request
) -> GenerationTaskPublic:
    """Cancel a generation task."""
    task = TaskService(session, rt, principal).cancel(task_id, task_type=TaskType.GENERATION)
    return _generation(to_public(task, base_url(rt, request)))


@router.post("/", summary="Create Task", response_model=TaskPublic)
async def create_task(
    body: Annotated[TaskCreate, Body(title="Task Data")],
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
    prefer: events_stream.PreferHeader = None,
    sync: events_stream.SyncQuery = False,
) -> TaskPublicBase:
    """Create and start a new task. The response carries ``request_id``/``status_url`` and a Location header.

    With an ``Idempotency-Key`` already used for the same request, the first request's task is answered as it is
    now (header ``Idempotent-Replayed: true``) and nothing is created. With ``Prefer: wait=N`` the answer waits up
    to N seconds (capped by the server) for the task to finish; a finished task comes with ``Preference-Applied``.
    """
    base = base_url(rt, request)

    def submit() -> TaskPublicBase:  # the create as a sync unit of work, in the thread pool
        service = TaskService(session, rt, principal)
        ttl = rt.settings.tasks.idempotency_ttl_seconds
        claim = idempotency.claim(
            session,
            principal,
            idempotency_key,
            endpoint=CREATE_ENDPOINT,
            resource_type="task",
            body=body,
            ttl_seconds=ttl,
        )
        if claim.replay is not None:
            task = claim.replayed(service.get, response)
        else:
            task = service.create(body)
            claim.bind(task.id)
            session.commit()  # publishes the run message (after-commit hook)
            with claim.released_if_refused():
                service.ensure_published(task)
        session.commit()  # ends the unit of work (a replay's reads too): a wait below holds no connection
        response.headers["Location"] = status_url(base, task)
        return to_public(task, base)

    task = await run_in_threadpool(submit)
    # The declared Prefer parameter documents the header; every Prefer header counts, FastAPI keeps only the first.
    wait = events_stream.requested_wait(request, rt.settings.server.max_sync_wait_seconds, sync=sync)
    if wait is None:
        return task
    finished = task.status in TERMINAL_STATUSES  # a replay may answer a finished task at once
    if not finished:
        latest, finished = await events_stream.wait_for_terminal(rt, principal, task.id, request, wait)
        if latest is not None:
            task = to_public(latest, base)
    if finished:
        response.headers[events_stream.PREFERENCE_APPLIED] = f"wait={wait}"
    return task


@router.get("/", summary="List Tasks", response_model=list[TaskPublic])
def list_tasks(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
    limit: Limit = 100,
    skip: Skip = 0,
    status: StatusQ = None,
    task_type: Annotated[TaskType | None, Query(description="Filter by task type")] = None,
    origin_instance: OriginInstance = None,
    origin_zone: OriginZone = None,
    origin_tenant_id: OriginTenant = None,
) -> list[TaskPublicBase]:
    """List tasks with optional filtering and pagination, newest first."""
    filters = TaskFilters(status, task_type, origin_instance, origin_zone, origin_tenant_id)
    base = base_url(rt, request)
    return [to_public(t, base) for t in TaskService(session, rt, principal).find(filters, limit=limit, skip=skip)]


@router.get(
    "/{task_id}/events",
    summary="Stream Task Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events (`text/event-stream`) of the task's lifecycle.",
            # OpenAPI 3.1: the schema of an event-stream media type describes one event
            "content": {
                events_stream.EVENT_STREAM: {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "id": {"type": "string"},
                            "event": {"type": "string"},
                            "data": {"type": "string", "contentMediaType": "application/json"},
                            "retry": {"type": "integer"},
                        },
                    }
                }
            },
        },
        204: {"description": "Nothing left to stream: the task is finished and `Last-Event-ID` is at its end."},
    },
)
async def stream_task_events(
    task_id: uuid.UUID,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
    last_event_id: LastEventIdHeader = None,
) -> Response:
    """Stream the task's events as server-sent events, ending after the event of its terminal status.

    Each event row is a frame ``id: <event id>``, ``event: <event_type>``, ``data: <json>`` (``event_type``,
    ``task_id``, ``status``, ``message``, ``data``, ``created_at``; ``TASK_STATUS`` frames add the task's ``progress``).
    A change of progress is sent as ``event: progress`` (no id). ``: keep-alive`` comments fill silences of 15 s;
    after ``ATELIER_SERVER__SSE_MAX_SECONDS`` the stream ends with ``event: timeout`` (reconnect with
    ``Last-Event-ID``). 204 when the task is finished and ``Last-Event-ID`` is at or past its last event.
    """
    follower = events_stream.EventFollower(task_id, last_id=events_stream.parse_last_event_id(last_event_id))
    first = await run_in_threadpool(events_stream.poll, rt.engine, principal.tenant, task_id, follower.last_id)
    if first is None:  # before anything is streamed: another tenant's task is a plain 404
        raise NotFoundError(f"task {task_id} not found")
    if first.over:  # EventSource reconnects after a stream ends; 204 tells it to stop
        return Response(status_code=204)
    return StreamingResponse(
        events_stream.stream(rt, principal.tenant, request, follower, first),
        media_type=events_stream.EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{task_id}", summary="Get Task", response_model=TaskPublic)
async def get_task(task_id: uuid.UUID, rt: RuntimeDep, principal: PrincipalDep, request: Request) -> Response:
    """Get a task by ID."""
    base = base_url(rt, request)  # hot path: one thread hop, Core read, pre-serialised response
    model = await run_read(request, lambda: to_public(read_task(rt, principal, task_id, with_estimate=True), base))
    return json_response(model)


@router.put("/{task_id}", summary="Update Task", response_model=TaskPublic)
def update_task(
    task_id: uuid.UUID,
    body: Annotated[TaskUpdate, Body(title="Update Data")],
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    request: Request,
) -> TaskPublicBase:
    """Update a task; the body is checked against the update schema of the task's type."""
    task = TaskService(session, rt, principal).update(task_id, body)
    return to_public(task, base_url(rt, request))


@router.delete("/{task_id}", summary="Delete Task", response_model=TaskPublic)
def delete_task(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep, request: Request
) -> TaskPublicBase:
    """Permanently delete the task's files, then its record (no audit trail). Returns the deleted task."""
    service = TaskService(session, rt, principal)
    task, _paths = service.delete(task_id)
    return to_public(task, base_url(rt, request))


@router.post("/{task_id}/cleanup", summary="Cleanup Task")
def cleanup_task(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> TaskCleanupResponse:
    """Mark the task deleted (is_deleted, deleted_at) and permanently remove its files; the record stays."""
    return TaskService(session, rt, principal).cleanup(task_id)


@router.post("/{task_id}/cancel", summary="Cancel Task", response_model=TaskPublic)
def cancel_task(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep, request: Request
) -> TaskPublicBase:
    """Cancel a task: PENDING ones at once, EXECUTING ones as soon as the provider checks (between steps)."""
    task = TaskService(session, rt, principal).cancel(task_id)
    return to_public(task, base_url(rt, request))
