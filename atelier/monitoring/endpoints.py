"""HTTP endpoints of the Monitoring API (`/api/v1/monitoring/…`): tasks and workflows across a tenant (admins: all
tenants), with filters, search, sorting and aggregate counts. Queue and worker figures are in ``workers_endpoints``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from atelier.core.deps import PrincipalDep, RuntimeDep, SessionDep
from atelier.monitoring.schemas import (
    PAGE_SIZE_MAX,
    AggregateStats,
    MonitoringWorkflowListResponse,
    SortOrder,
    TaskDetailResponse,
    TaskListResponse,
    TaskMediaResponse,
    TaskSortField,
    WorkflowAggregateStats,
    WorkflowDetailResponse,
    WorkflowSortField,
)
from atelier.monitoring.service import ListQuery, MonitoringService
from atelier.tasks.enums import ProviderType, TaskStatus, TaskType
from atelier.tasks.views import base_url
from atelier.workflows.planner import WorkflowStatus

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])

# Bounded: (page - 1) * page_size is the OFFSET, a 64-bit integer in the database (larger ones were a 500).
PageQ = Annotated[int, Query(ge=1, le=2**31 - 1, description="Page number (1-indexed)")]
PageSizeQ = Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX, description="Items per page")]
OrderQ = Annotated[SortOrder, Query(description="Sort order")]
InstanceQ = Annotated[str | None, Query(description="Filter by origin instance")]
ZoneQ = Annotated[str | None, Query(description="Filter by origin zone")]
OriginTenantQ = Annotated[str | None, Query(description="Filter by origin tenant ID")]
AfterQ = Annotated[datetime | None, Query(description="Filter: created after this datetime (UTC if no offset)")]
BeforeQ = Annotated[datetime | None, Query(description="Filter: created before this datetime (UTC if no offset)")]


def _utc(value: datetime | None) -> datetime | None:
    """A datetime without an offset is taken as UTC (every timestamp of the API is UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _service(session: SessionDep, rt: RuntimeDep, principal: PrincipalDep) -> MonitoringService:
    return MonitoringService(session, principal, rt)


@router.get("/tasks", summary="List Monitored Tasks")
def list_monitored_tasks(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    page: PageQ = 1,
    page_size: PageSizeQ = 50,
    sort_by: Annotated[TaskSortField, Query(description="Sort field")] = TaskSortField.created_at,
    sort_order: OrderQ = SortOrder.desc,
    status: Annotated[TaskStatus | None, Query(description="Filter by status")] = None,
    task_type: Annotated[TaskType | None, Query(description="Filter by task type")] = None,
    provider_type: Annotated[ProviderType | None, Query(description="Filter by provider type")] = None,
    origin_instance: InstanceQ = None,
    origin_zone: ZoneQ = None,
    origin_tenant_id: OriginTenantQ = None,
    created_after: AfterQ = None,
    created_before: BeforeQ = None,
    search: Annotated[str | None, Query(max_length=36, description="Search by task ID prefix")] = None,
) -> TaskListResponse:
    """Tasks with `duration_ms` and `has_error`; every filter is optional and they combine. Your tenant's tasks
    (an admin token: every tenant's)."""
    query = ListQuery(
        page=page,
        page_size=page_size,
        sort_by=sort_by.value,
        sort_order=sort_order,
        status=status.value if status else None,
        task_type=task_type.value if task_type else None,
        provider_type=provider_type.value if provider_type else None,
        origin_instance=origin_instance,
        origin_zone=origin_zone,
        origin_tenant_id=origin_tenant_id,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        search=search,
    )
    return _service(session, rt, principal).list_tasks(query)


@router.get("/tasks/{task_id}", summary="Get Monitored Task")
def get_monitored_task(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> TaskDetailResponse:
    """One task with its `task_data` (type-specific inputs and outputs), errors and external request log."""
    return _service(session, rt, principal).task_detail(task_id)


@router.get("/tasks/{task_id}/media", summary="Get Task Media")
def get_task_media(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep, request: Request
) -> TaskMediaResponse:
    """The task's input and output images/videos, each with a URL usable directly in a page."""
    return _service(session, rt, principal).task_media(task_id, base_url(rt, request))


@router.get("/stats", summary="Get Monitoring Stats")
def get_monitoring_stats(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    origin_instance: InstanceQ = None,
    origin_zone: ZoneQ = None,
) -> AggregateStats:
    """Task counts by status, provider and type, and tasks created in the last hour and day (up to 5 s old)."""
    return _service(session, rt, principal).stats(origin_instance, origin_zone)


@router.get("/workflows", summary="List Monitored Workflows")
def list_monitored_workflows(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    page: PageQ = 1,
    page_size: PageSizeQ = 50,
    sort_by: Annotated[WorkflowSortField, Query(description="Sort field")] = WorkflowSortField.created_at,
    sort_order: OrderQ = SortOrder.desc,
    status: Annotated[WorkflowStatus | None, Query(description="Filter by status")] = None,
    origin_instance: InstanceQ = None,
    origin_zone: ZoneQ = None,
    origin_tenant_id: OriginTenantQ = None,
    created_after: AfterQ = None,
    created_before: BeforeQ = None,
    search: Annotated[str | None, Query(max_length=255, description="Search by workflow name or ID prefix")] = None,
) -> MonitoringWorkflowListResponse:
    """Workflows with `duration_ms` and `has_error`; filters combine."""
    query = ListQuery(
        page=page,
        page_size=page_size,
        sort_by=sort_by.value,
        sort_order=sort_order,
        status=status.value if status else None,
        origin_instance=origin_instance,
        origin_zone=origin_zone,
        origin_tenant_id=origin_tenant_id,
        created_after=_utc(created_after),
        created_before=_utc(created_before),
        search=search,
    )
    return _service(session, rt, principal).list_workflows(query)


@router.get("/workflows/stats", summary="Get Workflow Monitoring Stats")
def get_workflow_stats(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    origin_instance: InstanceQ = None,
    origin_zone: ZoneQ = None,
) -> WorkflowAggregateStats:
    """Workflow counts by status, created in the last hour and day, mean steps per workflow (up to 5 s old)."""
    return _service(session, rt, principal).workflow_stats(origin_instance, origin_zone)


@router.get("/workflows/{workflow_id}", summary="Get Monitored Workflow")
def get_monitored_workflow(
    workflow_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> WorkflowDetailResponse:
    """One workflow with `duration_ms` and its steps in topological order."""
    return _service(session, rt, principal).workflow_detail(workflow_id)
