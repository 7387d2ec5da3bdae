"""ORM model of training tasks: the spec's TrainingTask fields plus the engine's claim/lease bookkeeping."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from atelier.core.db import Base, JSONType, UTCDateTime
from atelier.core.time import utcnow


class TrainingTask(Base):
    """One training job: preprocessing (download, validate, transform, caption) then the LoRA loop."""

    __tablename__ = "training_tasks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="PENDING")
    training_type: Mapped[str] = mapped_column(String(20), default="LORA")
    entity_type: Mapped[str] = mapped_column(String(20), default="PRODUCT")
    entity_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    trigger_word: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, default=1)
    priority_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # What to train (request, with defaults filled in).
    rank: Mapped[int] = mapped_column(Integer, default=16)
    steps: Mapped[int] = mapped_column(Integer, default=1000)
    learning_rate: Mapped[float] = mapped_column(Float, default=1e-4)
    batch_size: Mapped[int] = mapped_column(Integer, default=1)
    gradient_accumulation: Mapped[int] = mapped_column(Integer, default=1)
    optimizer: Mapped[str] = mapped_column(String(40), default="adamw8bit")
    resolution: Mapped[int] = mapped_column(Integer, default=512)
    save_every: Mapped[int] = mapped_column(Integer, default=2000)
    max_step_saves_to_keep: Mapped[int] = mapped_column(Integer, default=4)
    sample_every: Mapped[int] = mapped_column(Integer, default=250)
    sample_steps: Mapped[int] = mapped_column(Integer, default=25)
    sample_prompts: Mapped[list[str]] = mapped_column(JSONType, default=list)
    source_images: Mapped[list[str]] = mapped_column(JSONType, default=list)
    base_model_path: Mapped[str] = mapped_column(String(1024))
    bypass_guidance_embedding: Mapped[bool] = mapped_column(Boolean, default=False)
    preprocessing_transforms: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    preprocessing_captioning_strategy: Mapped[str] = mapped_column(String(40), default="trigger_only")
    preprocessing_captioning_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    origin_instance: Mapped[str] = mapped_column(String(255), default="unknown")
    origin_zone: Mapped[str | None] = mapped_column(String(100), nullable=True)
    origin_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    origin_tenant_id: Mapped[str | None] = mapped_column(String(255), nullable=True)

    # What happened (read fields).
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=1000)
    eta_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    training_folder: Mapped[str] = mapped_column(String(1024), default="")
    local_model_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    logs: Mapped[str] = mapped_column(Text, default="")
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_category: Mapped[str | None] = mapped_column(String(40), nullable=True)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # checkpoints, samples, loss, device
    preprocessing_stage: Mapped[str | None] = mapped_column(String(40), nullable=True)
    processed_files_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_files_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    preprocessing_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    preprocessing_completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    processed_dataset_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    celery_training_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    celery_preprocessing_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    celery_chain_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # Engine bookkeeping (as for tasks): the latest message, the claim's lease, cancellation, resumes.
    message_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    is_resumed: Mapped[bool] = mapped_column(Boolean, default=False)
    resume_attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    last_resume_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    webhook_sequence: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_training_tasks_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_training_tasks_status_lease", "status", "lease_expires_at"),
    )
