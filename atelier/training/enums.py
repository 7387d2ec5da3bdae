"""Enumerations of the Training API (values as in the reference spec; UPPER_SNAKE where it shows none)."""

from __future__ import annotations

from enum import StrEnum


class TrainingStatus(StrEnum):
    """Lifecycle of a training task; only ``atelier.training.transitions`` changes it."""

    PENDING = "PENDING"
    PREPROCESSING = "PREPROCESSING"
    TRAINING = "TRAINING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


RUNNING_STATUSES = frozenset({TrainingStatus.PREPROCESSING, TrainingStatus.TRAINING})
FINISHED_STATUSES = frozenset({TrainingStatus.COMPLETED, TrainingStatus.FAILED, TrainingStatus.CANCELLED})


class TrainingType(StrEnum):
    """What is trained: a LoRA adapter (FULL fine-tuning is refused with a clear 422)."""

    LORA = "LORA"
    FULL = "FULL"


class EntityType(StrEnum):
    """What the trained LoRA represents."""

    PRODUCT = "PRODUCT"
    SUBJECT = "SUBJECT"
    STYLE = "STYLE"


class CaptioningStrategy(StrEnum):
    """How each training image gets its caption."""

    TRIGGER_ONLY = "trigger_only"  # the trigger word alone
    TEMPLATE = "template"  # preprocessing_captioning_prompt with {trigger} filled in (default "a photo of {trigger}")
    VLM = "vlm"  # a vision-language model (AiCore) describes the image; the trigger word leads the caption


class TransformType(StrEnum):
    """Image transformations of the preprocessing stage, applied in the order given."""

    RESIZE = "RESIZE"  # longest side to `size` px (aspect kept)
    CENTER_CROP = "CENTER_CROP"  # largest centred square, or `width`×`height`
    PAD_TO_SQUARE = "PAD_TO_SQUARE"  # pad to a square with `color` (default white)
    AUTO_CONTRAST = "AUTO_CONTRAST"  # stretch the histogram (`cutoff` percent clipped)
    GRAYSCALE = "GRAYSCALE"
    HORIZONTAL_FLIP_AUGMENT = "HORIZONTAL_FLIP_AUGMENT"  # add a mirrored copy of every image
    REMOVE_BACKGROUND = "REMOVE_BACKGROUND"  # local rembg (u2netp), composited on `color` (default white)
    CROP_TO_SUBJECT = "CROP_TO_SUBJECT"  # crop to the non-background content plus `margin` (fraction)


# Entity type → LoRA library folder the finished LoRA is copied into (what GENERATION tasks name).
LIBRARY_FOLDER: dict[EntityType, str] = {
    EntityType.PRODUCT: "product",
    EntityType.SUBJECT: "identities",
    EntityType.STYLE: "styles",
}
