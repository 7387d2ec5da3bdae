"""Client-side models of the API's answers.

They ignore fields they do not know (``extra="ignore"``), so an older client keeps working against a newer server,
and their enums are *open*: a value the client does not know is kept as a plain ``str`` instead of failing
validation. Known values are the server's ``StrEnum`` members, which compare equal to their strings
(``task.status == "COMPLETED"``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from atelier.tasks.enums import (
    BackgroundFixStrategy,
    ErrorCategory,
    EventType,
    ProviderType,
    TaskStatus,
    TaskType,
)
from atelier.training.enums import EntityType, TrainingStatus, TrainingType
from atelier.workflows.planner import StepStatus, WorkflowStatus

E = TypeVar("E", bound=StrEnum)

Open = Annotated[E | str, Field(union_mode="left_to_right")]
"""``Open[SomeEnum]``: a member of the enum when the value is known, else the plain string."""

TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
TERMINAL_WORKFLOW_STATUSES = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})
TERMINAL_TRAINING_STATUSES = frozenset({TrainingStatus.COMPLETED, TrainingStatus.FAILED, TrainingStatus.CANCELLED})

__all__ = [
    "BackgroundFixStrategy",
    "ErrorCategory",
    "EventType",
    "ProviderType",
    "StepStatus",
    "TaskStatus",
    "TaskType",
    "TrainingStatus",
    "WorkflowStatus",
]


class ApiModel(BaseModel):
    """Base of the client models: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class Task(ApiModel):
    """A task of any type: the common fields plus every type's own fields (``None`` where a type has none)."""

    id: uuid.UUID
    task_type: Open[TaskType]
    status: Open[TaskStatus]
    priority: int = 0
    progress: float = 0.0
    config: dict[str, Any] | None = None
    errors: list[str] | None = None
    error_category: Open[ErrorCategory] | None = None
    retry_count: int = 0
    provider_type: Open[ProviderType] | None = None
    provider_config: dict[str, Any] | None = None
    active_provider_capabilities: list[str] | None = None
    fallback_provider_type: Open[ProviderType] | None = None
    fallback_provider_config: dict[str, Any] | None = None
    fallback_provider_capabilities: list[str] | None = None
    executor_type: str | None = None
    executor_instance: str | None = None
    celery_task_id: str | None = None
    service_task_id: str | None = None
    origin_instance: str = "unknown"
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_reference: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    webhook_url: str | None = None
    queue_name: str | None = None
    max_retries: int | None = None
    is_resumed: bool = False
    resume_attempt_count: int = 0
    last_resume_attempt: datetime | None = None
    service_requests: list[dict[str, Any]] = Field(default_factory=list)
    workflow_id: str | None = None
    cancel_requested: bool = False
    is_deleted: bool = False
    deleted_at: datetime | None = None
    request_id: str | None = None
    status_url: str | None = None
    queue_deadline_at: datetime | None = None
    run_timeout_seconds: float | None = None
    expires_at: datetime | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    # Inputs of the various types.
    prompt: str | None = None
    negative_prompt: str | None = None
    system_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    fal_app_id: str | None = None
    fal_request_id: str | None = None
    fal_parameters: dict[str, Any] | None = None
    subject_model_path: str | None = None
    product_model_path: str | None = None
    style_model_path: str | None = None
    product2_model_path: str | None = None
    subject_lora_weight: float | None = None
    product_lora_weight: float | None = None
    style_lora_weight: float | None = None
    product2_lora_weight: float | None = None
    reference_image_path: str | None = None
    reference_image_strength: float | None = None
    reference_images: list[str] | None = None
    base_image_path: str | None = None
    base_image_url: str | None = None
    palette_image_path: str | None = None
    input_image_path: str | None = None
    input_image_paths: list[str] | None = None
    input_images: list[str] | None = None
    upscale_factor: float | None = None
    upscale_seed: int | None = None
    upscale_steps: int | None = None
    upscale_denoise: float | None = None
    face_detail_seed: int | None = None
    face_detail_steps: int | None = None
    face_detail_denoise: float | None = None
    target_width: int | None = None
    target_height: int | None = None
    duration_seconds: int | None = None
    cfg_scale: float | None = None
    detail_label: str | None = None
    strategy: Open[BackgroundFixStrategy] | None = None
    edge_blur_sigma: float | None = None
    light_threshold: int | None = None
    shadow_threshold: int | None = None
    mask_expansion_percentage: float | None = None
    mode: str | None = None
    aspect_ratio: float | None = None
    cropping_position: str | None = None
    margin_top: float | None = None
    margin_bottom: float | None = None
    margin_left: float | None = None
    margin_right: float | None = None
    resampling: str | None = None
    scaling_proportions: str | None = None
    tolerance: float | None = None
    # Outputs and reports.
    result_image_path: str | None = None
    result_image_paths: list[str] | None = None
    result_video_path: str | None = None
    result_url: str | None = None
    result_text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    fallback_used: bool | None = None
    detail_location: list[int] | None = None
    match_score: float | None = None
    enhancement_notes: list[str] | None = None
    background_fix_report: dict[str, Any] | None = None
    face_detected: bool | None = None
    attempts_used: int | None = None
    final_ssim_score: float | None = None
    final_lpips_score: float | None = None
    final_dists_score: float | None = None
    faces: list[list[int]] | None = None

    @property
    def finished(self) -> bool:
        """COMPLETED, FAILED or CANCELLED."""
        return self.status in TERMINAL_TASK_STATUSES

    @property
    def outputs(self) -> list[str]:
        """The storage paths of the task's output files (images, video), in order."""
        paths = [self.result_image_path, *(self.result_image_paths or []), self.result_video_path]
        return [p for p in paths if p]


class TaskEvent(ApiModel):
    """One frame of a task's event stream: a recorded event (``id`` set) or a ``progress`` update (no id)."""

    id: int | None = None
    event_type: Open[EventType]
    task_id: uuid.UUID
    status: Open[TaskStatus] | None = None
    message: str | None = None
    data: Any = None
    created_at: datetime
    progress: float | None = None


class TaskCleanup(ApiModel):
    """Result of a soft delete."""

    task_id: uuid.UUID
    is_deleted: bool
    deleted_at: datetime | None = None
    deleted_paths: list[str] = Field(default_factory=list)


class WaitProgress(ApiModel):
    """What ``tasks.wait`` reports to ``on_progress``: the latest status, progress and (while PENDING) queue place."""

    task_id: uuid.UUID
    status: Open[TaskStatus]
    progress: float = 0.0
    queue_position: int | None = None
    eta_seconds: float | None = None
    event: TaskEvent | None = None


class WorkflowStep(ApiModel):
    """One step of a workflow."""

    id: uuid.UUID
    step_id: str
    task_type: Open[TaskType]
    status: Open[StepStatus]
    config: dict[str, Any] | None = None
    dependencies: list[str] = Field(default_factory=list)
    input_mappings: list[dict[str, Any]] = Field(default_factory=list)
    task_id: uuid.UUID | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_count: int = 0
    max_retries: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Workflow(ApiModel):
    """A workflow with its steps (in topological order)."""

    id: uuid.UUID
    name: str
    description: str | None = None
    status: Open[WorkflowStatus]
    total_steps: int = 0
    completed_steps: int = 0
    progress: float = 0.0
    current_step: str | None = None
    final_step_id: str | None = None
    final_step_result: dict[str, Any] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    suppress_subtask_events: bool = True
    origin_instance: str = "unknown"
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    origin_reference: str | None = None
    webhook_url: str | None = None
    errors: list[str] = Field(default_factory=list)
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    is_deleted: bool = False
    deleted_at: datetime | None = None
    steps: list[WorkflowStep] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        """COMPLETED, FAILED or CANCELLED."""
        return self.status in TERMINAL_WORKFLOW_STATUSES


class WorkflowList(ApiModel):
    """A page of workflows."""

    workflows: list[Workflow]
    total: int
    skip: int
    limit: int


class WorkflowCleanup(ApiModel):
    """Result of a workflow soft delete."""

    workflow: Workflow
    cleanup: dict[str, Any] = Field(default_factory=dict)


class StorageObject(ApiModel):
    """One stored file."""

    path: str
    size: int
    content_type: str
    last_modified: str


class StorageList(ApiModel):
    """A page of stored files; pass ``next_start_after`` as ``start_after`` for the next page."""

    items: list[StorageObject]
    count: int
    prefix: str | None = None
    limit: int
    next_start_after: str | None = None


class StorageDeleted(ApiModel):
    """Result of a storage delete."""

    path: str
    deleted: bool


class LoRAUpload(ApiModel):
    """A stored LoRA file (``entity_type`` only on the admin upload)."""

    file_path: str
    partial_path: str
    filename: str
    file_size: int
    upload_timestamp: str
    entity_type: str | None = None


class LoRADeleted(ApiModel):
    """A LoRA file moved to the bin."""

    deleted: bool
    full_path: str
    bin_path: str | None = None
    timestamp: str


class QueueStats(ApiModel):
    """One queue: depth, consumers, load, wait."""

    name: str
    depth: int = 0
    active_workers: int = 0
    active_tasks: int = 0
    reserved_tasks: int = 0
    avg_wait_time_ms: float | None = None
    tasks_completed_last_hour: int = 0


class QueueStatsList(ApiModel):
    """Every queue."""

    queues: list[QueueStats] = Field(default_factory=list)
    total_pending: int = 0
    total_active: int = 0
    timestamp: datetime


class WorkerInfo(ApiModel):
    """One worker."""

    name: str
    queues: list[str] = Field(default_factory=list)
    concurrency: int = 0
    active_tasks: int = 0
    utilization_pct: float = 0.0
    has_capacity: bool = False
    tasks_completed_total: int = 0
    tasks_per_minute: float = 0.0
    memory_mb: float | None = None


class WorkerStatsList(ApiModel):
    """Every worker."""

    workers: list[WorkerInfo] = Field(default_factory=list)
    total_workers: int = 0
    total_capacity: int = 0
    total_active: int = 0
    total_utilization_pct: float = 0.0
    workers_at_capacity: int = 0
    timestamp: datetime


class WorkersHealth(ApiModel):
    """Whether at least one worker has capacity, and which queues have none."""

    healthy: bool
    total_workers: int = 0
    workers_with_capacity: int = 0
    queues_with_workers: list[str] = Field(default_factory=list)
    queues_without_workers: list[str] = Field(default_factory=list)
    timestamp: datetime


class MonitoredTask(ApiModel):
    """One task of a monitoring list."""

    id: uuid.UUID
    task_type: Open[TaskType]
    status: Open[TaskStatus]
    provider_type: Open[ProviderType] | None = None
    progress: float = 0.0
    origin_instance: str = "unknown"
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    has_error: bool = False


class MonitoredTaskPage(ApiModel):
    """A page of monitored tasks."""

    items: list[MonitoredTask]
    total: int
    page: int
    page_size: int
    pages: int
    total_capped: bool = False


class MonitoringStats(ApiModel):
    """Task counts by status, provider and type."""

    total_tasks: int
    by_status: dict[str, int] = Field(default_factory=dict)
    by_provider: dict[str, int] = Field(default_factory=dict)
    by_task_type: dict[str, int] = Field(default_factory=dict)
    tasks_last_hour: int = 0
    tasks_last_24h: int = 0


class TrainingTask(ApiModel):
    """A LoRA training task (``TrainingTask`` of the reference)."""

    id: uuid.UUID
    status: Open[TrainingStatus] = TrainingStatus.PENDING
    trigger_word: str | None = None
    training_type: Open[TrainingType] | None = None
    entity_type: Open[EntityType] | None = None
    entity_id: uuid.UUID | None = None
    progress: float = 0.0
    current_step: int = 0
    total_steps: int | None = None
    eta_seconds: float | None = None
    rank: int | None = None
    steps: int | None = None
    learning_rate: float | None = None
    resolution: int | None = None
    batch_size: int | None = None
    gradient_accumulation: int | None = None
    optimizer: str | None = None
    save_every: int | None = None
    max_step_saves_to_keep: int | None = None
    sample_every: int | None = None
    sample_steps: int | None = None
    sample_prompts: list[str] = Field(default_factory=list)
    source_images: list[str] = Field(default_factory=list)
    base_model_path: str | None = None
    bypass_guidance_embedding: bool | None = None
    local_model_path: str | None = None
    training_folder: str | None = None
    checkpoints: list[str] = Field(default_factory=list)
    samples: list[str] = Field(default_factory=list)
    loss: list[float] = Field(default_factory=list)
    device: str | None = None
    preprocessing_stage: str | None = None
    preprocessing_transforms: list[dict[str, Any]] | None = None
    preprocessing_captioning_strategy: str | None = None
    preprocessing_captioning_prompt: str | None = None
    preprocessing_started_at: datetime | None = None
    preprocessing_completed_at: datetime | None = None
    processed_files_count: int | None = None
    total_files_count: int | None = None
    processed_dataset_path: str | None = None
    logs: str | None = None
    error_message: str | None = None
    error_category: str | None = None
    webhook_url: str | None = None
    priority: int | None = None
    priority_changed_at: datetime | None = None
    is_resumed: bool = False
    resume_attempt_count: int = 0
    celery_training_task_id: str | None = None
    celery_preprocessing_task_id: str | None = None
    celery_chain_task_id: str | None = None
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_version: str | None = None
    origin_tenant_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """COMPLETED, FAILED or CANCELLED."""
        return self.status in TERMINAL_TRAINING_STATUSES


class EvaluationResult(ApiModel):
    """What the image evaluator found (``EvaluationResponse``)."""

    success: bool
    detected_framing: str | None = None
    detected_view_angle: str | None = None
    shot_type_confidence: float | None = None
    matches_expected: bool | None = None
    human_detected: bool | None = None
    number_of_people: int | None = None
    human_presence_confidence: float | None = None
    anatomy_correct: bool | None = None
    anatomy_issues: list[Any] | None = None
    anatomy_confidence: float | None = None
    detected_gender: str | None = None
    gender_confidence: float | None = None
    garment_description: str | None = None
    subject_description: str | None = None
    scene_description: str | None = None
    collage_detected: bool | None = None
    error: str | None = None
    evaluation_time_ms: float | None = None
    confidence_summary: float | None = None


class EvaluatorHealth(ApiModel):
    """Health of the image evaluator (``HealthStatus``)."""

    is_healthy: bool
    health_score: float
    total_evaluations: int
    success_rate: float
    average_response_time: float
    circuit_breaker_state: str
