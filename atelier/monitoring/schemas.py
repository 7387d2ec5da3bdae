"""Public models of the task and workflow monitoring endpoints (the spec's schemas, field for field)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from atelier.tasks.enums import ProviderType, TaskStatus, TaskType
from atelier.workflows.planner import StepStatus, WorkflowStatus

PAGE_SIZE_MAX = 500


class SortOrder(StrEnum):
    """Direction of a sort."""

    asc = "asc"
    desc = "desc"


class TaskSortField(StrEnum):
    """Columns a task list can be sorted by (each backed by an index, alone and after `tenant_id`).

    Sorting by `completed_at` puts unfinished tasks last when ascending and first when descending (the index order).
    """

    created_at = "created_at"
    completed_at = "completed_at"
    priority = "priority"
    status = "status"


class WorkflowSortField(StrEnum):
    """Columns a workflow list can be sorted by."""

    created_at = "created_at"
    completed_at = "completed_at"
    name = "name"
    status = "status"


class Page(BaseModel):
    """Pagination of a monitoring list (1-indexed pages)."""

    total: int = Field(description="Matching items (exact up to `total_capped`'s limit)")
    page: int
    page_size: int
    pages: int
    total_capped: bool = Field(
        False, description="True when more items match than were counted (counts stop at 10 000 for speed)"
    )


class TaskListItem(BaseModel):
    """One task in a monitoring list."""

    id: uuid.UUID
    task_type: TaskType
    status: TaskStatus
    provider_type: ProviderType | None = None
    progress: float
    origin_instance: str
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = Field(
        None, description="Duration in milliseconds (computed from started_at to completed_at)"
    )
    has_error: bool = Field(description="Whether task has any errors")


class TaskListResponse(Page):
    """A page of tasks."""

    items: list[TaskListItem]


class TaskDetailResponse(BaseModel):
    """Everything about one task, with its type-specific data."""

    id: uuid.UUID
    task_type: TaskType
    provider_type: ProviderType | None = None
    status: TaskStatus
    progress: float = 0.0
    origin_instance: str
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_reference: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    queue_name: str = "inference"
    priority: int = 0
    celery_task_id: str | None = None
    service_task_id: str | None = None
    executor_type: str | None = None
    executor_instance: str | None = None
    config: dict[str, Any] | None = None
    webhook_url: str | None = None
    errors: list[str] | None = None
    retry_count: int = 0
    is_resumed: bool = False
    resume_attempt_count: int = 0
    last_resume_attempt: datetime | None = None
    service_requests: list[dict[str, Any]] | None = None
    task_data: dict[str, Any] = Field(default_factory=dict, description="Type-specific inputs and outputs")
    # Additive: the rest of the lifecycle.
    error_category: str | None = None
    workflow_id: str | None = None
    tenant_id: str = Field(description="Tenant the task belongs to")


class MediaItem(BaseModel):
    """An input or output file of a task, with a URL usable directly in a page."""

    name: str = Field(description="The field it comes from, e.g. 'base_image', 'result_image'")
    path: str
    url: str
    media_type: str = Field(description="'image' or 'video'")


class TaskMediaResponse(BaseModel):
    """A task's input and output files."""

    task_id: uuid.UUID
    inputs: list[MediaItem] = Field(default_factory=list)
    outputs: list[MediaItem] = Field(default_factory=list)


class AggregateStats(BaseModel):
    """Task counts."""

    total_tasks: int
    by_status: dict[str, int] = Field(default_factory=dict)
    by_provider: dict[str, int] = Field(default_factory=dict)
    by_task_type: dict[str, int] = Field(default_factory=dict)
    tasks_last_hour: int = 0
    tasks_last_24h: int = 0


class WorkflowListItem(BaseModel):
    """One workflow in a monitoring list."""

    id: uuid.UUID
    name: str
    description: str | None = None
    status: WorkflowStatus
    total_steps: int
    completed_steps: int
    progress: float
    current_step: str | None = None
    final_step_id: str | None = None
    origin_instance: str
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    has_error: bool


class MonitoringWorkflowListResponse(Page):
    """A page of workflows."""

    items: list[WorkflowListItem]


class WorkflowAggregateStats(BaseModel):
    """Workflow counts."""

    total_workflows: int
    by_status: dict[str, int] = Field(default_factory=dict)
    workflows_last_hour: int = 0
    workflows_last_24h: int = 0
    avg_steps_per_workflow: float = 0.0


class WorkflowStepMonitor(BaseModel):
    """One step of a monitored workflow."""

    id: uuid.UUID
    step_id: str = Field(description="Logical step identifier (e.g., 'generate', 'refine')")
    task_type: str = Field(description="Task type for this step")
    status: StepStatus
    task_id: uuid.UUID | None = Field(None, description="ID of the task created for this step")
    config: dict[str, Any] | None = Field(None, description="Step configuration")
    dependencies: list[str] = Field(default_factory=list, description="List of step IDs this step depends on")
    input_mappings: list[dict[str, Any]] = Field(default_factory=list, description="Input mappings from previous steps")
    result: dict[str, Any] | None = Field(None, description="Output data from this step")
    error_message: str | None = None
    retry_count: int = 0
    max_retries: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = Field(None, description="Duration in milliseconds")


class WorkflowDetailResponse(BaseModel):
    """A workflow with its steps in topological order."""

    id: uuid.UUID
    name: str
    description: str | None = None
    status: WorkflowStatus
    total_steps: int = 0
    completed_steps: int = 0
    progress: float = 0.0
    current_step: str | None = None
    final_step_id: str | None = None
    canvas_task_id: str | None = None
    origin_instance: str
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_reference: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    error_message: str | None = None
    errors: list[str] = Field(default_factory=list)
    steps: list[WorkflowStepMonitor] = Field(default_factory=list)
