"""Enumerations of the Tasks API (values as in the reference spec, UPPER_SNAKE where it shows none)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Lifecycle of a task; only ``atelier.tasks.transitions`` changes it."""

    PENDING = "PENDING"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class TaskType(StrEnum):
    """The eleven kinds of task, one per create schema."""

    GENERATION = "GENERATION"
    EDITING = "EDITING"
    REFINE = "REFINE"
    EXPERIMENTAL_FAL = "EXPERIMENTAL_FAL"
    VIDEO_GENERATION = "VIDEO_GENERATION"
    LLM_INTERACTION = "LLM_INTERACTION"
    BACKGROUND_REMOVAL = "BACKGROUND_REMOVAL"
    DETAIL_ENHANCER = "DETAIL_ENHANCER"
    BACKGROUND_FIX = "BACKGROUND_FIX"
    IMAGE_ADJUSTER = "IMAGE_ADJUSTER"
    FACE_ENHANCER = "FACE_ENHANCER"


class ProviderType(StrEnum):
    """Provider families, one per provider config schema."""

    FAL_STANDARD = "FAL_STANDARD"
    FAL_SHOOTIFY_REFINER = "FAL_SHOOTIFY_REFINER"
    FAL_GARMENT_FIXER = "FAL_GARMENT_FIXER"
    FASHN_STANDARD = "FASHN_STANDARD"
    FREEPIK_MAGNIFIC = "FREEPIK_MAGNIFIC"
    FREEPIK_MAGNIFIC_PRECISION = "FREEPIK_MAGNIFIC_PRECISION"
    VERTEX = "VERTEX"
    AICORE = "AICORE"
    LOCAL = "LOCAL"
    NANO_BANANA_UPSCALER = "NANO_BANANA_UPSCALER"
    SARTIQ_ULTIMATE_REFINER = "SARTIQ_ULTIMATE_REFINER"
    SARTIQ_ULTIMATE_FACE_FIXER = "SARTIQ_ULTIMATE_FACE_FIXER"
    SARTIQ_ULTIMATE_GARMENT_FIXER = "SARTIQ_ULTIMATE_GARMENT_FIXER"


class ProviderCapability(StrEnum):
    """What a provider can be asked to do for a task (see CreateRefineTask.upscale_factor)."""

    UPSCALE_2X = "UPSCALE_2X"
    UPSCALE_4X = "UPSCALE_4X"
    UPSCALE_8X = "UPSCALE_8X"
    UPSCALE_FLOAT = "UPSCALE_FLOAT"
    OUTPUT_SIZE = "OUTPUT_SIZE"


class ErrorCategory(StrEnum):
    """Why a task failed (or why its last attempt failed)."""

    INVALID_INPUT = "INVALID_INPUT"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_NOT_AVAILABLE = "PROVIDER_NOT_AVAILABLE"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    RATE_LIMITED = "RATE_LIMITED"
    CONTENT_REJECTED = "CONTENT_REJECTED"
    NETWORK_ERROR = "NETWORK_ERROR"
    STORAGE_ERROR = "STORAGE_ERROR"
    WORKER_LOST = "WORKER_LOST"
    CANCELLED = "CANCELLED"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"  # never started before its queue-wait deadline
    TIMEOUT = "TIMEOUT"  # an attempt ran longer than its run timeout
    INTERNAL_ERROR = "INTERNAL_ERROR"


class EventType(StrEnum):
    """Kinds of lifecycle event recorded for tasks."""

    TASK_CREATED = "TASK_CREATED"
    TASK_STATUS = "TASK_STATUS"
    TASK_RETRY_SCHEDULED = "TASK_RETRY_SCHEDULED"
    TASK_FALLBACK_ACTIVATED = "TASK_FALLBACK_ACTIVATED"
    TASK_CANCEL_REQUESTED = "TASK_CANCEL_REQUESTED"
    TRAINING_STATUS = "TRAINING_STATUS"
    PREPROCESSING_STATUS = "PREPROCESSING_STATUS"
    INFERENCE_STATUS = "INFERENCE_STATUS"
    WORKFLOW_STATUS = "WORKFLOW_STATUS"


class BackgroundFixStrategy(StrEnum):
    """How a background fix recolours the backdrop."""

    COLOR_SHIFT = "COLOR_SHIFT"
    REPLACE = "REPLACE"
    HARMONIZE = "HARMONIZE"


# Output folder per task type; DELETE/cleanup remove everything under ``{prefix}/{task_id}/``.
OUTPUT_PREFIX: dict[TaskType, str] = {
    TaskType.GENERATION: "generations",
    TaskType.EDITING: "editings",
    TaskType.REFINE: "refines",
    TaskType.EXPERIMENTAL_FAL: "experimental",
    TaskType.VIDEO_GENERATION: "videos",
    TaskType.LLM_INTERACTION: "llm",
    TaskType.BACKGROUND_REMOVAL: "background-removals",
    TaskType.DETAIL_ENHANCER: "detail-enhancements",
    TaskType.BACKGROUND_FIX: "background-fixes",
    TaskType.IMAGE_ADJUSTER: "adjustments",
    TaskType.FACE_ENHANCER: "face-enhancements",
}
