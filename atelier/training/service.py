"""Rules of the Training API: create (validated whole, nothing written on refusal), read, cancel, and the one
door for training status changes (legal edges, timestamps, log lines and webhook events in one transaction)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from atelier.core.auth import Principal
from atelier.core.errors import ConflictError, InvalidInputError, NotFoundError
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.delivery.events import BaseEvent, PreprocessingStatusEvent, TaskCreatedEvent, TrainingStatusEvent
from atelier.delivery.outbox import new_delivery
from atelier.delivery.signing import check_webhook_url
from atelier.engine.dispatch import Dispatch, enqueue
from atelier.providers.registry import TRAINING_QUEUE
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import EventType
from atelier.tasks.sources import ResolvedSources, SourceResolver
from atelier.tasks.transitions import WEBHOOK_PENDING_INFO, IllegalTransitionError
from atelier.training.enums import (
    FINISHED_STATUSES,
    RUNNING_STATUSES,
    CaptioningStrategy,
    TrainingStatus,
    TrainingType,
)
from atelier.training.models import TrainingTask as TrainingRow
from atelier.training.schemas import DEFAULT_BASE_MODEL, TrainingTask, TrainingTaskCreate
from atelier.training.transforms import validate_transforms

S = TrainingStatus
ALLOWED: dict[TrainingStatus, frozenset[TrainingStatus]] = {
    S.PENDING: frozenset({S.PREPROCESSING, S.CANCELLED, S.FAILED}),
    S.PREPROCESSING: frozenset({S.TRAINING, S.CANCELLED, S.FAILED}),
    S.TRAINING: frozenset({S.COMPLETED, S.CANCELLED, S.FAILED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
FOLDER = "training"  # storage: training/{id}/sources|dataset|checkpoints|samples|lora.safetensors
PREPROCESSING_SHARE = 5.0  # percent of `progress` that preprocessing accounts for
MAX_LOSS_POINTS = 500


def training_folder(training_id: uuid.UUID) -> str:
    """The storage folder of one training's files."""
    return f"{FOLDER}/{training_id}"


def public(row: TrainingRow) -> TrainingTask:
    """The API view of a training row."""
    out = TrainingTask.model_validate(row)
    outputs = row.outputs or {}
    return out.model_copy(
        update={
            "checkpoints": list(outputs.get("checkpoints", [])),
            "samples": list(outputs.get("samples", [])),
            "loss": list(outputs.get("loss", [])),
            "device": outputs.get("device"),
        }
    )


def append_log(row: TrainingRow, line: str, max_chars: int) -> None:
    """Add a timestamped line to ``logs``, keeping the last ``max_chars`` characters."""
    text = (row.logs or "") + f"{utcnow().isoformat(timespec='seconds')} {line}\n"
    row.logs = text[-max_chars:]


def transition(
    session: Session,
    runtime: Runtime,
    row: TrainingRow,
    to: TrainingStatus,
    *,
    message: str | None = None,
    category: str | None = None,
) -> None:
    """Move ``row`` to ``to``: check the edge, stamp timestamps, log it, queue its webhook events."""
    current = TrainingStatus(row.status)
    if to not in ALLOWED[current]:
        raise IllegalTransitionError(f"training {row.id} is {current.value}; it cannot become {to.value}")
    now = utcnow()
    row.status = to.value
    if to is S.PREPROCESSING:
        row.started_at = row.started_at or now
        row.preprocessing_started_at = row.preprocessing_started_at or now
    elif to is S.TRAINING:
        row.preprocessing_completed_at = now
        row.progress = max(row.progress, PREPROCESSING_SHARE)
    if to in FINISHED_STATUSES:
        row.completed_at = now
        row.eta_seconds = None if to is not S.COMPLETED else 0
        row.lease_owner = None
        row.lease_expires_at = None
        if to is S.COMPLETED:
            row.progress = 100.0
        if message and to is not S.COMPLETED:
            row.error_message = message
            row.error_category = category
    append_log(row, f"status {current.value} -> {to.value}" + (f": {message}" if message else ""), _max_log(runtime))
    for payload in _events(row, current, to):
        queue_webhook(session, runtime, row, payload)


def _max_log(runtime: Runtime) -> int:
    return runtime.settings.training.max_log_chars


def _events(row: TrainingRow, before: TrainingStatus, to: TrainingStatus) -> list[BaseEvent]:
    preprocessing = to is S.PREPROCESSING or (before is S.PREPROCESSING and to is not S.TRAINING)
    events: list[BaseEvent] = []
    if to is S.TRAINING or preprocessing:
        stage_status = "COMPLETED" if to is S.TRAINING else to.value
        events.append(_preprocessing_event(row, stage_status))
    if to is not S.PREPROCESSING:
        events.append(_training_event(row))
    return events


def _metadata(row: TrainingRow) -> dict[str, Any]:
    row.webhook_sequence = (row.webhook_sequence or 0) + 1
    return {"tenant": row.tenant_id, "sequence": row.webhook_sequence, "kind": "training"}


def _common(row: TrainingRow, event_type: EventType, status: str) -> dict[str, Any]:
    return {
        "event_type": event_type,
        "task_id": row.id,
        "status": status,
        "timestamp": utcnow(),
        "entity_id": str(row.entity_id) if row.entity_id else None,
        "metadata": _metadata(row),
        "origin_instance": row.origin_instance,
        "origin_zone": row.origin_zone,
        "origin_version": row.origin_version,
    }


def _preprocessing_event(row: TrainingRow, status: str) -> PreprocessingStatusEvent:
    total = row.total_files_count or 0
    done = row.processed_files_count or 0
    return PreprocessingStatusEvent(
        **_common(row, EventType.PREPROCESSING_STATUS, status),
        current_stage=row.preprocessing_stage,
        progress=100.0 if status == "COMPLETED" else (100.0 * done / total if total else 0.0),
        processed_files_count=done,
        total_files_count=total,
        processed_dataset_path=row.processed_dataset_path,
        error_message=row.error_message,
        completed_at=row.preprocessing_completed_at,
    )


def _training_event(row: TrainingRow) -> TrainingStatusEvent:
    return TrainingStatusEvent(
        **_common(row, EventType.TRAINING_STATUS, row.status),
        progress=row.progress,
        current_step=row.current_step,
        total_steps=row.total_steps,
        eta_seconds=row.eta_seconds,
        local_model_path=row.local_model_path,
        error_message=row.error_message,
        completed_at=row.completed_at,
    )


def queue_webhook(session: Session, runtime: Runtime, row: TrainingRow, payload: BaseEvent) -> None:
    """Queue one event for the training's ``webhook_url`` (same transaction as the change it reports)."""
    if not row.webhook_url:
        return
    session.add(
        new_delivery(
            tenant=row.tenant_id,
            target=str(row.id),
            url=row.webhook_url,
            payload=payload,
            now=utcnow(),
            window_seconds=runtime.settings.webhooks.retry_window_seconds,
            training_id=row.id,
        )
    )
    session.info[WEBHOOK_PENDING_INFO] = True  # wakes this process's webhook loop after the commit


def dispatch_for(row: TrainingRow, *, again: bool = False) -> Dispatch:
    """The Celery message that runs ``row`` (its id becomes the row's ``message_id``).

    ``again``: publish the row's current message once more under the same id. A training may wait in its queue
    for hours behind others; a fresh id would invalidate the queued message and send the training to the back
    of the queue. With the same id either copy may claim it; the claim's status and lease checks drop the other.
    """
    message_id = row.message_id if again and row.message_id else uuid.uuid4().hex
    row.message_id = message_id
    row.celery_training_task_id = message_id
    row.celery_chain_task_id = message_id
    row.dispatched_at = utcnow()
    return Dispatch(row.id, TRAINING_QUEUE, row.priority, message_id, kind="training")


class TrainingService:
    """Training tasks of one caller (a tenant never sees another's)."""

    def __init__(self, session: Session, runtime: Runtime, principal: Principal) -> None:
        self.session = session
        self.rt = runtime
        self.principal = principal
        self.storage = TenantStorage(runtime.storage, principal.tenant)

    def create(self, body: TrainingTaskCreate) -> TrainingRow:
        """Validate everything, store inline source images, insert the row PENDING and queue its message."""
        self.principal.require_write()
        settings = self.rt.settings
        defaults = settings.training
        if body.training_type is not TrainingType.LORA:
            raise InvalidInputError(
                "training_type FULL is not supported: only LORA adapters are trained", loc=("body", "training_type")
            )
        steps = body.steps if body.steps is not None else 1000
        if steps > defaults.max_steps:
            raise InvalidInputError(f"steps must be at most {defaults.max_steps}", loc=("body", "steps"))
        sources = body.source_images or []
        if not sources:
            raise InvalidInputError("at least one source image is needed", loc=("body", "source_images"))
        if len(sources) > defaults.max_source_images:
            raise InvalidInputError(
                f"at most {defaults.max_source_images} source images per training", loc=("body", "source_images")
            )
        strategy = body.preprocessing_captioning_strategy or CaptioningStrategy.TRIGGER_ONLY
        if strategy is CaptioningStrategy.VLM and not (defaults.captioning_provider and defaults.captioning_model):
            raise InvalidInputError(
                "captioning strategy 'vlm' needs a vision model: set ATELIER_TRAINING__CAPTIONING_PROVIDER and "
                "ATELIER_TRAINING__CAPTIONING_MODEL",
                loc=("body", "preprocessing_captioning_strategy"),
            )
        template = body.preprocessing_captioning_prompt
        if strategy is CaptioningStrategy.TEMPLATE and template and "{trigger}" not in template:
            raise InvalidInputError(
                "a template captioning prompt must contain {trigger}", loc=("body", "preprocessing_captioning_prompt")
            )
        transforms = validate_transforms(body.preprocessing_transforms or [])
        sample_every = body.sample_every if body.sample_every is not None else defaults.sample_every
        prompts = [p for p in (body.sample_prompts or []) if p.strip()]
        check_webhook_url(body.webhook_url, settings, loc=("body", "webhook_url"))

        training_id = uuid.uuid4()
        resolver = SourceResolver(
            self.storage, self.rt.fetch_limits, None, training_id, prefix=f"{training_folder(training_id)}/sources"
        )
        resolved = ResolvedSources()
        stored = [
            resolver.source(value, ("body", "source_images", i), f"source_{i:04d}", resolved)
            for i, value in enumerate(sources)
        ]
        resolver.persist(resolved)  # everything validated: only now is anything written

        now = utcnow()
        row = TrainingRow(
            id=training_id,
            tenant_id=self.principal.tenant,
            status=S.PENDING.value,
            training_type=body.training_type.value,
            entity_type=body.entity_type.value,
            entity_id=body.entity_id,
            trigger_word=body.trigger_word,
            priority=body.priority if body.priority is not None else 1,
            rank=body.rank if body.rank is not None else 16,
            steps=steps,
            total_steps=steps,
            learning_rate=body.learning_rate if body.learning_rate is not None else 1e-4,
            batch_size=body.batch_size or 1,
            gradient_accumulation=body.gradient_accumulation or 1,
            optimizer=body.optimizer or "adamw8bit",
            resolution=body.resolution or defaults.resolution,
            save_every=body.save_every if body.save_every is not None else defaults.save_every,
            max_step_saves_to_keep=body.max_step_saves_to_keep or defaults.max_step_saves_to_keep,
            sample_every=sample_every if prompts else 0,
            sample_steps=body.sample_steps or defaults.sample_steps,
            sample_prompts=prompts,
            source_images=stored,
            base_model_path=body.base_model_path or DEFAULT_BASE_MODEL,
            bypass_guidance_embedding=bool(body.bypass_guidance_embedding),
            preprocessing_transforms=transforms or None,
            preprocessing_captioning_strategy=strategy.value,
            preprocessing_captioning_prompt=body.preprocessing_captioning_prompt,
            webhook_url=body.webhook_url or None,
            origin_instance=body.origin_instance or "unknown",
            origin_zone=body.origin_zone,
            origin_version=body.origin_version,
            origin_tenant_id=body.origin_tenant_id,
            training_folder=training_folder(training_id),
            total_files_count=len(stored),
            processed_files_count=0,
            outputs={},
            logs="",
            created_at=now,
            updated_at=now,
        )
        append_log(row, f"created: {len(stored)} source image(s), {steps} steps, rank {row.rank}", _max_log(self.rt))
        self.session.add(row)
        self.session.flush()
        created = TaskCreatedEvent(
            **_common(row, EventType.TASK_CREATED, S.PENDING.value),
            task_type="TRAINING",
            created_at=row.created_at,
            total_steps=row.total_steps,
        )
        queue_webhook(self.session, self.rt, row, created)
        enqueue(self.session, dispatch_for(row))
        return row

    def get(self, training_id: uuid.UUID, *, for_update: bool = False) -> TrainingRow:
        """The caller's training task, or 404."""
        stmt = select(TrainingRow).where(TrainingRow.id == training_id, TrainingRow.tenant_id == self.principal.tenant)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.session.scalar(stmt)
        if row is None:
            raise NotFoundError(f"training task {training_id} not found")
        return row

    def list(self, *, limit: int, skip: int) -> list[TrainingRow]:
        """The caller's training tasks, newest first."""
        stmt = (
            select(TrainingRow)
            .where(TrainingRow.tenant_id == self.principal.tenant)
            .order_by(TrainingRow.created_at.desc(), TrainingRow.id.desc())
            .offset(skip)
            .limit(limit)
        )
        return list(self.session.scalars(stmt))

    def cancel(self, training_id: uuid.UUID) -> TrainingRow:
        """PENDING: cancelled at once. Running: flagged; the loop stops within one step and keeps a checkpoint."""
        self.principal.require_write()
        row = self.get(training_id, for_update=True)
        status = TrainingStatus(row.status)
        if status in FINISHED_STATUSES:
            raise ConflictError(f"training task {training_id} is {status.value}; only unfinished ones can be cancelled")
        if status is S.PENDING:
            transition(self.session, self.rt, row, S.CANCELLED, message="cancelled before it started")
        elif status in RUNNING_STATUSES and not row.cancel_requested:
            row.cancel_requested = True
            append_log(row, "cancel requested", _max_log(self.rt))
        return row
