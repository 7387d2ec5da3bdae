"""API contract of the shot evaluation endpoints (field names, defaults and types as in the reference spec)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Framing(StrEnum):
    """How much of the subject the shot shows, from the head down."""

    FULL_BODY = "full_body"  # head to feet
    THREE_QUARTER = "three_quarter"  # head to knees/thighs
    UPPER_BODY = "upper_body"  # head to waist/hips
    CLOSE_UP = "close_up"  # head and shoulders
    LOWER_BODY = "lower_body"  # waist down, no head (trousers, shoes)


class ViewAngle(StrEnum):
    """Which side of the subject faces the camera."""

    FRONT = "front"
    THREE_QUARTER = "three_quarter"
    SIDE = "side"
    BACK = "back"


class Gender(StrEnum):
    """Presented gender of the subject."""

    FEMALE = "FEMALE"
    MALE = "MALE"


class AnatomyIssue(StrEnum):
    """Anatomy defects typical of generated people."""

    EXTRA_LIMBS = "extra_limbs"
    MISSING_LIMBS = "missing_limbs"
    EXTRA_FINGERS = "extra_fingers"
    MISSING_FINGERS = "missing_fingers"
    MALFORMED_HANDS = "malformed_hands"
    MALFORMED_FEET = "malformed_feet"
    DISTORTED_FACE = "distorted_face"
    UNNATURAL_PROPORTIONS = "unnatural_proportions"
    IMPOSSIBLE_POSE = "impossible_pose"
    MERGED_BODIES = "merged_bodies"
    OTHER = "other"


class EvaluationProvider(StrEnum):
    """Evaluation backends (the ``provider`` query parameter)."""

    LOCAL = "local"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    OLLAMA = "ollama"
    VERTEX = "vertex"


class EvaluationRequest(BaseModel):
    """Schema for evaluation API requests."""

    model_config = ConfigDict(extra="forbid")

    image_data: str | None = Field(None, description="Base64-encoded image data (data:image/jpeg;base64,... format)")
    image_url: str | None = Field(None, description="URL to image file")
    expected_framing: Framing = Field(description="Expected framing type for the image")
    expected_view_angle: ViewAngle = Field(description="Expected view angle for the image")
    expected_gender: Gender | None = Field(Gender.FEMALE, description="Expected gender for the image")
    custom_instructions: str | None = Field(None, description="Custom instructions for the evaluation")
    include_descriptions: bool = Field(False, description="Include garment and subject descriptions")


class EvaluationResponse(BaseModel):
    """Schema for evaluation API responses."""

    success: bool = Field(description="Whether the evaluation was successful")
    detected_framing: Framing | None = Field(None, description="Detected framing type")
    detected_view_angle: ViewAngle | None = Field(None, description="Detected view angle")
    shot_type_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Confidence score for shot type detection"
    )
    matches_expected: bool | None = Field(None, description="Whether detected shot type matches expected")
    human_detected: bool | None = Field(None, description="Whether humans were detected in the image")
    number_of_people: int | None = Field(None, description="Number of people detected")
    human_presence_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Confidence score for human detection"
    )
    anatomy_correct: bool | None = Field(None, description="Whether anatomy appears correct")
    anatomy_issues: list[AnatomyIssue] | None = Field(None, description="List of detected anatomy issues")
    anatomy_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Confidence score for anatomy analysis")
    detected_gender: Gender | None = Field(None, description="Detected gender")
    gender_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Confidence score for gender detection")
    garment_description: str | None = Field(None, description="Description of garments in the image")
    subject_description: str | None = Field(None, description="Description of the subject")
    scene_description: str | None = Field(None, description="Description of the scene")
    collage_detected: bool | None = Field(None, description="Whether a collage or stitched image was detected")
    error: str | None = Field(None, description="Error message if evaluation failed")
    evaluation_time_ms: float | None = Field(None, description="Time taken for evaluation in milliseconds")
    confidence_summary: float | None = Field(
        None, ge=0.0, le=1.0, description="Average confidence across all evaluations"
    )


CONFIDENCE_FIELDS = ("shot_type_confidence", "human_presence_confidence", "anatomy_confidence", "gender_confidence")


class HealthStatus(BaseModel):
    """Schema for evaluator health status."""

    is_healthy: bool = Field(description="Whether the evaluator is healthy")
    health_score: float = Field(ge=0.0, le=1.0, description="Health score (0.0-1.0)")
    total_evaluations: int = Field(description="Total number of evaluations performed")
    success_rate: float = Field(ge=0.0, le=1.0, description="Success rate (0.0-1.0)")
    average_response_time: float = Field(description="Average response time in seconds")
    circuit_breaker_state: str = Field(description="Circuit breaker state")
