"""Workflow API schemas (the spec's CreateWorkflow, WorkflowPublic, WorkflowStepPublic, …)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from atelier.tasks.enums import ProviderType, TaskType
from atelier.tasks.schemas import HTTP_URL
from atelier.workflows.planner import StepStatus, WorkflowStatus


class FieldMapping(BaseModel):
    """Feed a field of a finished step's result into a field of this step's task."""

    model_config = ConfigDict(extra="forbid")

    from_step: str = Field(min_length=1, max_length=255, description="Step ID to get output from")
    from_field: str = Field(
        min_length=1,
        max_length=255,
        description="Output field name from source step (dotted paths with list indexes: `result_image_paths.0`)",
    )
    to_field: str = Field(min_length=1, max_length=255, description="Input field name in target step")
    transform: str | None = Field(
        None,
        description="Optional transformation to apply when mapping: first, last, as_list, as_string, as_int, "
        "as_float, basename",
    )


class WorkflowStepDefinition(BaseModel):
    """One step of the DAG: a task type, its static inputs and where its other inputs come from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=255, description="Unique identifier for this step within the workflow")
    task_type: TaskType = Field(description="Type of task to execute")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Static configuration for the task (prompt, dimensions, etc.)"
    )
    depends_on: list[str] = Field(default_factory=list, description="List of step IDs this step depends on")
    input_mappings: list[FieldMapping] = Field(
        default_factory=list, description="Mappings from previous step outputs to this step's inputs"
    )
    max_retries: int | None = Field(None, ge=0, le=20, description="Maximum retry attempts for this step")
    provider_config: dict[str, Any] | None = Field(
        None, description="Provider-specific configuration (provider_type, fal_app_id, etc.)"
    )
    active_provider_capabilities: list[str] | None = Field(
        None, description="List of active capabilities for this task"
    )
    fallback_provider_type: ProviderType | None = Field(
        None, description="Fallback provider activated when primary exhausts all retries."
    )
    fallback_provider_config: dict[str, Any] | None = Field(
        None, description="Provider-specific config for the fallback provider."
    )
    fallback_provider_capabilities: list[str] | None = Field(
        None, description="Capabilities for the fallback provider."
    )


class CreateWorkflow(BaseModel):
    """A workflow definition."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, description="Human-readable workflow name")
    description: str | None = Field(None, max_length=1000, description="Optional workflow description")
    steps: list[WorkflowStepDefinition] = Field(min_length=1, description="List of steps defining the workflow DAG")
    config: dict[str, Any] = Field(default_factory=dict, description="Global workflow configuration")
    origin_instance: str = Field(min_length=1, max_length=100, description="Origin instance identifier")
    origin_zone: str | None = Field(None, max_length=50, description="Origin zone identifier")
    origin_tenant_id: str | None = Field(None, max_length=100, description="Tenant identifier for multi-tenant setups")
    origin_reference: str | None = Field(None, max_length=512, description="External reference ID for tracking")
    webhook_url: Annotated[str | None, HTTP_URL] = Field(
        None, max_length=512, description="URL to call when workflow completes"
    )
    suppress_subtask_events: bool = Field(True, description="Whether to suppress individual task events")


class WorkflowUpdate(BaseModel):
    """The fields a PATCH may change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=1000)
    webhook_url: Annotated[str | None, HTTP_URL] = Field(None, max_length=512)


class WorkflowStepPublic(BaseModel):
    """A step as returned by the API."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    step_id: str
    task_type: str
    config: dict[str, Any] | None = None
    provider_config: dict[str, Any] | None = None
    active_provider_capabilities: list[str] | None = None
    fallback_provider_type: str | None = None
    fallback_provider_config: dict[str, Any] | None = None
    fallback_provider_capabilities: list[str] | None = None
    dependencies: list[str] = Field(default_factory=list)
    input_mappings: list[dict[str, Any]] = Field(default_factory=list)
    status: StepStatus
    task_id: uuid.UUID | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_count: int = 0
    max_retries: int | None = None
    created_at: datetime
    updated_at: datetime


class WorkflowPublic(BaseModel):
    """A workflow with all its steps (in topological order)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None = None
    status: WorkflowStatus
    total_steps: int
    completed_steps: int
    progress: float = Field(description="Fraction of steps finished, 0.0–1.0")
    current_step: str | None = None
    final_step_id: str | None = None
    final_step_result: dict[str, Any] | None = None
    canvas_task_id: str | None = None
    config: dict[str, Any]
    suppress_subtask_events: bool
    origin_instance: str
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_reference: str | None = None
    webhook_url: str | None = None
    errors: list[str]
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    is_deleted: bool = False
    deleted_at: datetime | None = None
    steps: list[WorkflowStepPublic] = Field(default_factory=list)


class WorkflowListResponse(BaseModel):
    """A page of workflows, newest first."""

    workflows: list[WorkflowPublic]
    total: int
    skip: int
    limit: int


class CleanupError(BaseModel):
    """A task whose files could not all be removed."""

    task_id: uuid.UUID | None = None
    step_id: str
    task_type: str
    error: str


class WorkflowCleanupStats(BaseModel):
    """What a cleanup removed."""

    tasks_processed: int = 0
    tasks_cleaned: int = 0
    deleted_paths: list[str] = Field(default_factory=list)
    errors: list[CleanupError] = Field(default_factory=list)


class WorkflowCleanupResponse(BaseModel):
    """The soft-deleted workflow and the cleanup report."""

    workflow: WorkflowPublic
    cleanup: WorkflowCleanupStats
