"""Pydantic schemas of the Training API (the spec's TrainingTaskCreate and TrainingTask)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from atelier.training.enums import CaptioningStrategy, EntityType, TrainingStatus, TrainingType

DEFAULT_BASE_MODEL = "black-forest-labs/FLUX.1-dev"
ORIGIN_INSTANCE_DOC = "Identifier for the instance that created this task (e.g., 'production', 'staging')"
ORIGIN_ZONE_DOC = "Environment identifier (e.g., 'eu', 'us')"
ORIGIN_VERSION_DOC = "Version of the backend that created this task"
ORIGIN_TENANT_DOC = "Optional tenant/organization identifier for multi-tenant setups"


class TrainingTaskCreate(BaseModel):
    """Schema for creating new training tasks (created **and started**: it is queued at once).

    Null in an optional field means its default. The ai-toolkit-style knobs after ``preprocessing_captioning_prompt``
    are extensions: absent, they take the server's defaults (``ATELIER_TRAINING__…``).
    """

    model_config = ConfigDict(title="TrainingTaskCreate", extra="forbid")

    training_type: TrainingType = TrainingType.LORA
    entity_type: EntityType = EntityType.PRODUCT
    entity_id: uuid.UUID | None = None
    trigger_word: str = Field(min_length=1, max_length=200)
    rank: int | None = Field(16, ge=1, le=256)
    steps: int | None = Field(1000, ge=1)
    learning_rate: float | None = Field(0.0001, gt=0, le=1)
    sample_prompts: list[str] | None = Field(default_factory=list, max_length=16)
    source_images: list[str] | None = Field(
        default_factory=list, description="Image URLs, data URLs/base64 or storage paths of the caller's tenant"
    )
    base_model_path: str | None = Field(
        DEFAULT_BASE_MODEL,
        description="A local diffusers folder on the workers, or a hub id already in their local cache "
        "(models are never downloaded)",
    )
    bypass_guidance_embedding: bool | None = False
    webhook_url: str | None = None
    origin_instance: str | None = Field("unknown", description=ORIGIN_INSTANCE_DOC)
    origin_zone: str | None = Field(None, description=ORIGIN_ZONE_DOC)
    origin_version: str | None = Field(None, description=ORIGIN_VERSION_DOC)
    origin_tenant_id: str | None = Field(None, description=ORIGIN_TENANT_DOC)
    preprocessing_transforms: list[dict[str, Any]] | None = Field(
        None, description='List of image transformations to apply (`{"type": TransformType, …parameters}`)'
    )
    preprocessing_captioning_strategy: CaptioningStrategy | None = Field(
        CaptioningStrategy.TRIGGER_ONLY, description="Strategy for image captioning"
    )
    preprocessing_captioning_prompt: str | None = Field(None, description="Custom prompt for captioning")

    # Extensions (response fields of TrainingTask that a request may set).
    save_every: int | None = Field(None, ge=0, description="Checkpoint every N steps (0: only the final LoRA)")
    max_step_saves_to_keep: int | None = Field(None, ge=1, le=100)
    batch_size: int | None = Field(None, ge=1, le=64)
    gradient_accumulation: int | None = Field(None, ge=1, le=64)
    optimizer: Literal["adamw8bit", "adamw"] | None = Field(
        None, description="adamw8bit needs bitsandbytes and a GPU; elsewhere AdamW runs and the logs say so"
    )
    sample_every: int | None = Field(None, ge=0, description="Sample every N steps (0: never)")
    sample_steps: int | None = Field(None, ge=1, le=200)
    resolution: int | None = Field(None, ge=8, le=4096, description="Square training resolution in pixels")
    priority: int | None = Field(None, ge=0, le=10, description="Higher runs sooner (default 1)")

    @field_validator("trigger_word")
    @classmethod
    def _one_line(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c in value for c in "\r\n\t"):
            raise ValueError("trigger_word must be one non-empty line")
        return value


class TrainingTask(BaseModel):
    """A training task as the API reports it."""

    model_config = ConfigDict(title="TrainingTask", from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    origin_instance: str = Field("unknown", description=ORIGIN_INSTANCE_DOC)
    origin_zone: str | None = Field(None, description=ORIGIN_ZONE_DOC)
    origin_version: str | None = Field(None, description=ORIGIN_VERSION_DOC)
    origin_tenant_id: str | None = Field(None, description=ORIGIN_TENANT_DOC)
    training_type: TrainingType = TrainingType.LORA
    entity_type: EntityType = EntityType.PRODUCT
    entity_id: uuid.UUID | None = None
    status: TrainingStatus = TrainingStatus.PENDING
    progress: float = Field(0.0, description="Percent done (0..100): preprocessing counts for the first 5")
    current_step: int = 0
    total_steps: int = 1000
    eta_seconds: int | None = None
    trigger_word: str
    training_folder: str = Field("", description="Storage folder of this training's files")
    rank: int = 16
    save_every: int = 2000
    max_step_saves_to_keep: int = 4
    batch_size: int = 1
    steps: int = 1000
    learning_rate: float = 0.0001
    gradient_accumulation: int = 1
    optimizer: str = "adamw8bit"
    bypass_guidance_embedding: bool = False
    base_model_path: str = DEFAULT_BASE_MODEL
    local_model_path: str | None = Field(None, description="Storage path of the trained LoRA (or last checkpoint)")
    sample_every: int = 250
    sample_steps: int = 25
    sample_prompts: list[str] = Field(default_factory=list)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    logs: str = ""
    error_message: str | None = None
    webhook_url: str = ""
    celery_training_task_id: str | None = None
    celery_preprocessing_task_id: str | None = None
    celery_chain_task_id: str | None = None
    preprocessing_stage: str | None = Field(
        None, description="Current preprocessing stage (downloading, validating, etc.)"
    )
    processed_files_count: int | None = Field(None, description="Number of files processed during preprocessing")
    total_files_count: int | None = Field(None, description="Total number of files to process")
    preprocessing_started_at: datetime | None = Field(None, description="When preprocessing phase started")
    preprocessing_completed_at: datetime | None = Field(None, description="When preprocessing phase completed")
    source_images: list[str] = Field(default_factory=list, description="Original image paths from source system")
    processed_dataset_path: str | None = Field(None, description="Path to the processed dataset on compute server")
    preprocessing_transforms: list[dict[str, Any]] | None = Field(
        None, description="List of image transformations to apply"
    )
    preprocessing_captioning_strategy: str = Field("trigger_only", description="Strategy for image captioning")
    preprocessing_captioning_prompt: str | None = Field(None, description="Custom prompt for captioning")
    priority: int = Field(1, description="Task priority affecting queue position")
    priority_changed_at: datetime | None = Field(None, description="Timestamp of last priority change")
    # Extensions.
    resolution: int = 512
    error_category: str | None = None
    is_resumed: bool = False
    resume_attempt_count: int = 0
    checkpoints: list[str] = Field(default_factory=list, description="Storage paths of the kept step checkpoints")
    samples: list[str] = Field(default_factory=list, description="Storage paths of the sample images")
    loss: list[float] = Field(default_factory=list, description="Loss at each logged step (at most 500 points)")
    device: str | None = Field(None, description="Where the loop ran (cpu, cuda…)")

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _empty_webhook(cls, value: Any) -> Any:
        return "" if value is None else value
