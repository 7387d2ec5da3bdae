"""Tasks API contract: the spec's ``Create*Task``, ``*TaskPublic`` and ``*TaskPublicUpdate`` schemas."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from atelier.tasks.enums import BackgroundFixStrategy, ErrorCategory, ProviderType, TaskStatus, TaskType

ImageSource = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40_000_000,
        description="Image as base64, data URL (data:image/...), remote URL (http(s)://...) or a storage path.",
    ),
]
Capabilities = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)]
QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Dimension = Annotated[int, Field(ge=1, le=16384)]


def http_url(value: str | None) -> str | None:
    """Accept only absolute http(s) URLs (webhooks)."""
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


HTTP_URL = AfterValidator(http_url)


class TaskCreateBase(BaseModel):
    """Fields every create schema shares."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(0, ge=-100, le=100, description="Higher = more priority.")
    config: dict[str, Any] | None = Field(None, description="Flexible configuration storage")
    provider_type: ProviderType | None = Field(None, description="Provider type for task execution")
    provider_config: dict[str, Any] | None = Field(None, description="Provider-specific configuration")
    active_provider_capabilities: Capabilities | None = Field(
        None, description="List of active capabilities for this task"
    )
    fallback_provider_type: ProviderType | None = Field(
        None,
        description="Fallback provider activated when primary exhausts all retries (non-ValueError only).",
    )
    fallback_provider_config: dict[str, Any] | None = Field(
        None, description="Provider-specific config for the fallback provider. Shape varies by provider type."
    )
    fallback_provider_capabilities: Capabilities | None = Field(
        None,
        description="Capabilities for the fallback provider. Replaces active_provider_capabilities on fallback "
        "activation.",
    )
    queue_name: QueueName | None = Field(
        None, description="Optional queue override. If not specified, determined by provider_type"
    )
    webhook_url: Annotated[str | None, HTTP_URL] = Field(None, max_length=2048, description="Webhook URL")
    origin_instance: str = Field(
        "unknown",
        min_length=1,
        max_length=255,
        description="Identifier for the instance that created this task",
    )
    origin_zone: str | None = Field(None, max_length=100, description="Environment/zone identifier (e.g., 'eu', 'us')")
    origin_tenant_id: str | None = Field(None, max_length=255, description="Optional tenant/organization identifier")
    origin_reference: str | None = Field(
        None,
        max_length=512,
        description="Optional id or reference string from the origin (e.g. a prediction id)",
    )


class CreateGenerationTask(TaskCreateBase):
    """Generate an image from a prompt."""

    task_type: Literal["GENERATION"]
    prompt: str = Field(min_length=1, max_length=20_000, description="Task prompt")
    width: Dimension | None = Field(None, description="Image width")
    height: Dimension | None = Field(None, description="Image height")
    seed: Seed | None = Field(None, description="Random seed for generation")
    fal_app_id: str | None = Field(None, max_length=255, description="FAL app ID for task execution")
    subject_model_path: str | None = Field(None, max_length=1024, description="Path to the subject model")
    product_model_path: str | None = Field(None, max_length=1024, description="Path to the product model")
    style_model_path: str | None = Field(None, max_length=1024, description="Path to the style model")
    product2_model_path: str | None = Field(None, max_length=1024, description="Path to the second product model")
    subject_lora_weight: float | None = Field(None, ge=-10, le=10, description="Subject LoRA weight")
    product_lora_weight: float | None = Field(None, ge=-10, le=10, description="Product LoRA weight")
    style_lora_weight: float | None = Field(None, ge=-10, le=10, description="Style LoRA weight")
    product2_lora_weight: float | None = Field(None, ge=-10, le=10, description="Second product LoRA weight")
    reference_image_data: ImageSource | None = Field(None, description="Base64-encoded reference image data")
    reference_image_url: str | None = Field(None, max_length=4096, description="URL to reference image file")
    reference_image_strength: float | None = Field(
        None, ge=0, le=100, description="Influence of the reference image on generation (0-100)"
    )


class CreateEditingTask(TaskCreateBase):
    """Edit a base image following a prompt."""

    task_type: Literal["EDITING"]
    prompt: str = Field(min_length=1, max_length=20_000, description="Task prompt")
    base_image: ImageSource | None = Field(None, description="Base image as base64, data URL or remote URL")
    width: Dimension | None = Field(None, description="Image width")
    height: Dimension | None = Field(None, description="Image height")
    seed: Seed | None = Field(None, description="Random seed for generation")
    reference_images: list[ImageSource] | None = Field(
        None, max_length=16, description="List of reference images (base64, data URLs, or remote URLs)"
    )
    fal_app_id: str | None = Field(None, max_length=255, description="FAL app ID for task execution")
    workflow_id: str | None = Field(None, max_length=64, description="Workflow ID")
    base_image_data: ImageSource | None = Field(None, description="DEPRECATED: Use base_image instead.")
    base_image_url: str | None = Field(None, max_length=4096, description="DEPRECATED: Use base_image instead.")
    reference_image_data: ImageSource | None = Field(None, description="DEPRECATED: Use reference_images instead.")
    reference_image_url: str | None = Field(
        None, max_length=4096, description="DEPRECATED: Use reference_images instead."
    )

    @model_validator(mode="after")
    def _needs_base(self) -> CreateEditingTask:
        if not (self.base_image or self.base_image_data or self.base_image_url):
            raise ValueError("base_image is required")
        return self


class CreateRefineTask(TaskCreateBase):
    """Upscale and/or refine faces of an image."""

    task_type: Literal["REFINE"]
    base_image_url: ImageSource = Field(description="Base image URL")
    upscale_enabled: bool = Field(True, description="Whether to upscale the image")
    upscale_factor: float | None = Field(
        None,
        gt=0,
        le=16,
        description="Upscale factor. Integer values 2, 4, 8 use specific UPSCALE_*X capabilities. Non-integer "
        "values require UPSCALE_FLOAT capability. If not provided, OUTPUT_SIZE capability is required",
    )
    upscale_prompt: str | None = Field(None, max_length=20_000, description="Task prompt")
    upscale_seed: Seed | None = Field(None, description="Seed for the upscale")
    upscale_steps: int = Field(20, ge=1, le=200, description="Number of inference steps")
    upscale_denoise: float = Field(0.3, ge=0, le=1, description="Denoise strength")
    face_detail_enabled: bool = Field(False, description="Whether to enhance face details in the image")
    face_detail_prompt: str | None = Field(None, max_length=20_000, description="Face detail prompt")
    face_detail_seed: Seed | None = Field(None, description="Seed for the face detail enhancement")
    face_detail_steps: int = Field(20, ge=1, le=200, description="Number of inference steps")
    face_detail_denoise: float = Field(0.3, ge=0, le=1, description="Denoise strength")
    target_width: Dimension | None = Field(None, description="Target output width in pixels")
    target_height: Dimension | None = Field(None, description="Target output height in pixels")
    fal_app_id: str | None = Field(None, max_length=255, description="FAL app ID for task execution")


class CreateExperimentalFalTask(TaskCreateBase):
    """Run any fal app with arbitrary parameters."""

    task_type: Literal["EXPERIMENTAL_FAL"]
    fal_app_id: str = Field(min_length=1, max_length=255, description="FAL app ID for task execution")
    fal_parameters: dict[str, Any] | None = Field(None, description="Arbitrary parameters to pass to the FAL app")


class CreateVideoGenerationTask(TaskCreateBase):
    """Generate a video from a prompt and an optional first frame."""

    task_type: Literal["VIDEO_GENERATION"]
    prompt: str = Field(min_length=1, max_length=20_000, description="Task prompt")
    negative_prompt: str | None = Field(None, max_length=20_000, description="Negative prompt")
    input_image_url: str | None = Field(None, max_length=4096, description="URL of the input image")
    input_image_data: ImageSource | None = Field(None, description="Base64 input image")
    duration_seconds: int = Field(5, ge=1, le=60, description="Video duration (1-60 s)")
    cfg_scale: float = Field(0.5, ge=0.0, le=2.0, description="Guidance scale (0.0-2.0)")


class CreateLLMInteractionTask(TaskCreateBase):
    """Ask a language model, optionally about images."""

    task_type: Literal[TaskType.LLM_INTERACTION]
    prompt: str = Field(min_length=1, max_length=200_000, description="Prompt")
    system_prompt: str | None = Field(None, max_length=200_000, description="System prompt")
    input_images: list[ImageSource] | None = Field(None, max_length=16, description="List of image paths/URLs")


class CreateBackgroundRemovalTask(TaskCreateBase):
    """Cut subjects out of one or more images."""

    task_type: Literal["BACKGROUND_REMOVAL"]
    input_image_paths: list[ImageSource] = Field(
        min_length=1, max_length=50, description="List of image paths or URLs for batch background removal"
    )


class CreateDetailEnhancerTask(TaskCreateBase):
    """Restore a detail (logo, garment print) of an image from a reference."""

    task_type: Literal["DETAIL_ENHANCER"]
    base_image: ImageSource = Field(description="Base image as base64, data URL, or remote URL")
    reference_image: ImageSource = Field(description="Reference image for detail transfer")
    detail_label: str | None = Field(None, max_length=100, description="Type of detail to enhance (e.g. logos)")


class CreateBackgroundFixTask(TaskCreateBase):
    """Recolour a background towards a palette image."""

    task_type: Literal["BACKGROUND_FIX"]
    base_image: ImageSource = Field(description="Base image as base64, data URL, remote URL, or local path")
    palette_image: ImageSource = Field(description="Palette/reference image for target background color")
    strategy: BackgroundFixStrategy = Field(BackgroundFixStrategy.COLOR_SHIFT, description="Processing strategy")
    edge_blur_sigma: float = Field(20.0, ge=0, le=500, description="Gaussian blur sigma for soft edge transitions")
    light_threshold: int = Field(220, ge=0, le=255, description="Brightness above which full color shift applied")
    shadow_threshold: int = Field(150, ge=0, le=255, description="Brightness below which no color shift applied")
    mask_expansion_percentage: float = Field(0.005, ge=0, le=1, description="Percentage to expand person mask")


AdjusterMode = Literal["auto", "crop", "pad", "scale"]
CroppingPosition = Literal[
    "center", "top", "bottom", "left", "right", "top_left", "top_right", "bottom_left", "bottom_right"
]
Resampling = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
ScalingProportions = Literal["fit", "height", "width"]
Margin = Annotated[float, Field(ge=0.0, le=1.0)]


def parse_aspect_ratio(value: float | str | None) -> float | None:
    """Accept ``0.8``, ``"0.8"``, ``"4:5"`` or ``"4/5"``; the ratio is width/height and must be positive."""
    if value is None or isinstance(value, float | int):
        ratio = value
    else:
        parts = value.replace("/", ":").split(":")
        try:
            ratio = float(parts[0]) / float(parts[1]) if len(parts) == 2 else float(parts[0])
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError("aspect_ratio must be a number or 'W:H'") from exc
    if ratio is not None and not 0.01 <= ratio <= 100:
        raise ValueError("aspect_ratio must be between 0.01 and 100")
    return ratio


class CreateImageAdjusterTask(TaskCreateBase):
    """Crop, pad or scale an image to an aspect ratio or size, optionally keeping subject margins."""

    task_type: Literal["IMAGE_ADJUSTER"]
    input_image: ImageSource = Field(description="Input image as base64, data URL, remote URL, or local path")
    mode: AdjusterMode = Field(
        "auto",
        description="Resize mode: 'auto' pads when the aspect-ratio difference is >5% and crops when <=5%; "
        "'crop' removes pixels, 'pad' adds padding, 'scale' resizes keeping proportions.",
    )
    aspect_ratio: float | str | None = Field(
        None, description="Target aspect ratio (width/height). Use either this or target_width/target_height."
    )
    target_width: Dimension | None = Field(None, description="Target width in pixels (requires target_height)")
    target_height: Dimension | None = Field(None, description="Target height in pixels (requires target_width)")
    cropping_position: CroppingPosition = Field("center", description="Position to crop from (mode='crop')")
    margin_top: Margin | None = Field(None, description="Minimum top margin as a fraction of the final height")
    margin_bottom: Margin | None = Field(None, description="Minimum bottom margin as a fraction of the final height")
    margin_left: Margin | None = Field(None, description="Minimum left margin as a fraction of the final width")
    margin_right: Margin | None = Field(None, description="Minimum right margin as a fraction of the final width")
    reference_image: ImageSource | None = Field(
        None, description="Optional reference image used to derive subject margins automatically"
    )
    resampling: Resampling = Field("lanczos", description="Resampling filter to use")
    scaling_proportions: ScalingProportions = Field(
        "fit",
        description="'fit' keeps all margins; 'height' matches vertical margins exactly (may crop horizontally)",
    )
    tolerance: float = Field(0.0, ge=0.0, le=1.0, description="Tolerance for skipping the adjustment (0-1)")

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, value: float | str | None) -> float | None:
        return parse_aspect_ratio(value)

    @model_validator(mode="after")
    def _target(self) -> CreateImageAdjusterTask:
        if (self.target_width is None) != (self.target_height is None):
            raise ValueError("target_width and target_height must be given together")
        if self.aspect_ratio is not None and self.target_width is not None:
            raise ValueError("use either aspect_ratio or target_width/target_height, not both")
        if self.aspect_ratio is None and self.target_width is None:
            raise ValueError("one of aspect_ratio or target_width/target_height is required")
        margins = [self.margin_top, self.margin_bottom, self.margin_left, self.margin_right]
        if self.reference_image is not None and any(m is not None for m in margins):
            raise ValueError("give either explicit margins or a reference_image, not both")
        if (self.margin_top or 0) + (self.margin_bottom or 0) >= 1 or (self.margin_left or 0) + (
            self.margin_right or 0
        ) >= 1:
            raise ValueError("opposite margins must sum to less than 1")
        return self


class CreateFaceEnhancerTask(TaskCreateBase):
    """Restore faces in an image."""

    task_type: Literal["FACE_ENHANCER"]
    input_image: ImageSource = Field(description="Input image as base64, data URL, or remote URL")


TaskCreate = Annotated[
    CreateGenerationTask
    | CreateEditingTask
    | CreateRefineTask
    | CreateExperimentalFalTask
    | CreateVideoGenerationTask
    | CreateLLMInteractionTask
    | CreateBackgroundRemovalTask
    | CreateDetailEnhancerTask
    | CreateBackgroundFixTask
    | CreateImageAdjusterTask
    | CreateFaceEnhancerTask,
    Field(discriminator="task_type", title="Task Data"),
]


# ---------------------------------------------------------------------------------------------- reads


class TaskPublicBase(BaseModel):
    """Fields every public task schema shares."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: TaskStatus
    priority: int = Field(description="Task priority")
    progress: float = 0.0
    config: dict[str, Any] | None = None
    errors: list[str] | None = None
    error_category: ErrorCategory | None = None
    retry_count: int = 0
    provider_type: ProviderType | None = None
    provider_config: dict[str, Any] | None = None
    active_provider_capabilities: list[str] | None = None
    fallback_provider_type: ProviderType | None = None
    fallback_provider_config: dict[str, Any] | None = None
    fallback_provider_capabilities: list[str] | None = None
    executor_type: str | None = None
    executor_instance: str | None = None
    celery_task_id: str | None = None
    service_task_id: str | None = None
    origin_instance: str = Field(description="Task origin instance")
    origin_zone: str | None = Field(None, description="Task origin zone")
    origin_tenant_id: str | None = Field(None, description="Task origin tenant ID")
    origin_reference: str | None = Field(None, description="Optional reference ID or string from the origin system")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # Additive fields (not in the reference): the Bria-style status flow and queue bookkeeping.
    queue_name: str | None = Field(None, description="Celery queue the task runs on")
    max_retries: int | None = Field(None, description="Retries allowed on the current provider")
    is_resumed: bool = Field(False, description="Whether the task was resumed after its worker was lost")
    resume_attempt_count: int = Field(0, description="Number of resume attempts")
    last_resume_attempt: datetime | None = Field(None, description="Last resume attempt timestamp")
    service_requests: list[dict[str, Any]] = Field(default_factory=list, description="External request log")
    workflow_id: str | None = Field(None, description="Workflow this task belongs to")
    cancel_requested: bool = Field(False, description="Cancellation requested; the running provider stops soon")
    is_deleted: bool = Field(False, description="Soft-deleted by cleanup (files removed, row kept)")
    deleted_at: datetime | None = None
    request_id: str | None = Field(None, description="Id for GET /v2/status/{request_id}")
    status_url: str | None = Field(None, description="Absolute URL of this task's status")
    queue_deadline_at: datetime | None = Field(
        None, description="Queue-wait deadline: not started by then → CANCELLED with QUEUE_TIMEOUT"
    )
    run_timeout_seconds: float | None = Field(None, description="Longest one attempt may run (→ FAILED, TIMEOUT)")
    expires_at: datetime | None = Field(
        None, description="When a finished task's results are purged (retention); afterwards reads answer 410 Gone"
    )
    queue_position: int | None = Field(
        None, description="While PENDING (single-task reads): tasks of the same queue expected to start first"
    )
    eta_seconds: float | None = Field(
        None, description="While PENDING (single-task reads): estimated seconds until it finishes, from recent runs"
    )


class GenerationTaskPublic(TaskPublicBase):
    """A generation task."""

    task_type: Literal["GENERATION"] = "GENERATION"
    subject_model_path: str | None = None
    product_model_path: str | None = None
    style_model_path: str | None = None
    product2_model_path: str | None = None
    subject_lora_weight: float | None = None
    product_lora_weight: float | None = None
    style_lora_weight: float | None = None
    product2_lora_weight: float | None = None
    prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    result_image_path: str | None = None
    reference_image_path: str | None = None
    reference_image_strength: float | None = None
    fal_app_id: str | None = Field(description="Get FAL app ID from provider config.")
    fal_request_id: str | None = Field(description="Get FAL request ID from provider config.")


class EditingTaskPublic(TaskPublicBase):
    """An editing task."""

    task_type: Literal["EDITING"] = "EDITING"
    prompt: str | None = None
    base_image_path: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    reference_images: list[str] | None = None
    reference_image_path: str | None = None
    result_image_path: str | None = None
    fal_app_id: str | None = None
    fal_request_id: str | None = None


class RefineTaskPublic(TaskPublicBase):
    """A refine task."""

    task_type: Literal["REFINE"] = "REFINE"
    base_image_url: str | None = None
    upscale_factor: float | None = None
    upscale_seed: int | None = None
    upscale_steps: int | None = None
    upscale_denoise: float | None = None
    face_detail_seed: int | None = None
    face_detail_steps: int | None = None
    face_detail_denoise: float | None = None
    target_width: int | None = None
    target_height: int | None = None
    result_image_path: str | None = None
    fal_app_id: str | None = Field(None, description="Get FAL app ID from provider config.")
    fal_request_id: str | None = Field(None, description="Get FAL request ID from provider config.")


class ExperimentalFalTaskPublic(TaskPublicBase):
    """An experimental fal task."""

    task_type: Literal["EXPERIMENTAL_FAL"] = "EXPERIMENTAL_FAL"
    fal_app_id: str | None = None
    fal_parameters: dict[str, Any] | None = None
    fal_request_id: str | None = None
    result_url: str | None = None


class VideoGenerationTaskPublic(TaskPublicBase):
    """A video generation task."""

    task_type: Literal["VIDEO_GENERATION"] = "VIDEO_GENERATION"
    prompt: str | None = None
    negative_prompt: str | None = None
    input_image_path: str | None = None
    duration_seconds: int | None = None
    cfg_scale: float | None = None
    result_video_path: str | None = None


class LLMInteractionTaskPublic(TaskPublicBase):
    """An LLM interaction task."""

    task_type: Literal[TaskType.LLM_INTERACTION] = Field(TaskType.LLM_INTERACTION, description="Task type")
    prompt: str | None = None
    system_prompt: str | None = None
    input_images: list[str] | None = None
    result_text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class BackgroundRemovalTaskPublic(TaskPublicBase):
    """A background removal task."""

    task_type: Literal["BACKGROUND_REMOVAL"] = "BACKGROUND_REMOVAL"
    input_image_paths: list[str] = Field(default_factory=list)
    result_image_paths: list[str] | None = None


class DetailEnhancerTaskPublic(TaskPublicBase):
    """A detail enhancer task."""

    task_type: Literal["DETAIL_ENHANCER"] = "DETAIL_ENHANCER"
    base_image_path: str | None = None
    reference_image_path: str | None = None
    detail_label: str | None = None
    result_image_path: str | None = None
    fallback_used: bool = False
    # Additive: where the detail was found, how well it matched, and what the enhancer noted.
    detail_location: list[int] | None = Field(None, description="Box (left, top, right, bottom) of the detail")
    match_score: float | None = Field(None, description="Template-match score of the located detail (0-1)")
    enhancement_notes: list[str] | None = None


class BackgroundFixTaskPublic(TaskPublicBase):
    """A background fix task."""

    task_type: Literal["BACKGROUND_FIX"] = "BACKGROUND_FIX"
    base_image_path: str | None = None
    palette_image_path: str | None = None
    strategy: BackgroundFixStrategy = BackgroundFixStrategy.COLOR_SHIFT
    edge_blur_sigma: float | None = None
    light_threshold: int | None = None
    shadow_threshold: int | None = None
    mask_expansion_percentage: float | None = None
    result_image_path: str | None = None
    background_fix_report: dict[str, Any] | None = Field(
        None, description="Target and reference colours, background share (additive)"
    )


class ImageAdjusterTaskPublic(TaskPublicBase):
    """An image adjuster task."""

    task_type: Literal["IMAGE_ADJUSTER"] = "IMAGE_ADJUSTER"
    input_image_path: str | None = None
    mode: str = "auto"
    aspect_ratio: float | None = None
    target_width: int | None = None
    target_height: int | None = None
    cropping_position: str | None = None
    margin_top: float | None = None
    margin_bottom: float | None = None
    margin_left: float | None = None
    margin_right: float | None = None
    reference_image_path: str | None = None
    resampling: str | None = None
    scaling_proportions: str | None = None
    tolerance: float | None = None
    result_image_path: str | None = None


class FaceEnhancerTaskPublic(TaskPublicBase):
    """A face enhancer task."""

    task_type: Literal["FACE_ENHANCER"] = "FACE_ENHANCER"
    input_image_path: str | None = None
    result_image_path: str | None = None
    face_detected: bool | None = None
    fallback_used: bool = False
    attempts_used: int | None = None
    final_ssim_score: float | None = None
    final_lpips_score: float | None = None
    final_dists_score: float | None = None
    # Additive: the detected face boxes and why a score is missing, when it is.
    faces: list[list[int]] | None = Field(None, description="Detected faces (left, top, right, bottom)")
    enhancement_notes: list[str] | None = None


TaskPublic = Annotated[
    GenerationTaskPublic
    | EditingTaskPublic
    | RefineTaskPublic
    | ExperimentalFalTaskPublic
    | VideoGenerationTaskPublic
    | LLMInteractionTaskPublic
    | BackgroundRemovalTaskPublic
    | DetailEnhancerTaskPublic
    | BackgroundFixTaskPublic
    | ImageAdjusterTaskPublic
    | FaceEnhancerTaskPublic,
    Field(discriminator="task_type"),
]

PUBLIC_MODELS: dict[TaskType, type[TaskPublicBase]] = {
    TaskType.GENERATION: GenerationTaskPublic,
    TaskType.EDITING: EditingTaskPublic,
    TaskType.REFINE: RefineTaskPublic,
    TaskType.EXPERIMENTAL_FAL: ExperimentalFalTaskPublic,
    TaskType.VIDEO_GENERATION: VideoGenerationTaskPublic,
    TaskType.LLM_INTERACTION: LLMInteractionTaskPublic,
    TaskType.BACKGROUND_REMOVAL: BackgroundRemovalTaskPublic,
    TaskType.DETAIL_ENHANCER: DetailEnhancerTaskPublic,
    TaskType.BACKGROUND_FIX: BackgroundFixTaskPublic,
    TaskType.IMAGE_ADJUSTER: ImageAdjusterTaskPublic,
    TaskType.FACE_ENHANCER: FaceEnhancerTaskPublic,
}


# ---------------------------------------------------------------------------------------------- updates


class TaskPublicUpdateBase(BaseModel):
    """Fields every ``*TaskPublicUpdate`` shares; all optional, only the sent ones are applied."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    priority: int | None = Field(None, ge=-100, le=100)
    executor_type: str | None = Field(None, max_length=100)
    executor_instance: str | None = Field(None, max_length=255)
    errors: list[str] | None = Field(None, max_length=1000)
    config: dict[str, Any] | None = None


class GenerationTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a generation task through ``PUT /api/v1/tasks/{id}``."""


class EditingTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of an editing task."""


class RefineTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a refine task."""


class ExperimentalFalTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of an experimental fal task."""

    fal_app_id: str | None = Field(None, max_length=255)
    fal_parameters: dict[str, Any] | None = None


class VideoGenerationTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a video generation task."""


class BookkeepingUpdate(TaskPublicUpdateBase):
    """Bookkeeping fields an external executor may report (LLM and generation updates)."""

    created_at: datetime | None = Field(None, description="Task creation timestamp (managed by the service)")
    updated_at: datetime | None = Field(None, description="Task last update timestamp (managed by the service)")
    task_type: TaskType | None = Field(None, description="Task type (cannot change)")
    origin_instance: str | None = Field(None, max_length=255, description="Task origin instance")
    origin_zone: str | None = Field(None, max_length=100, description="Task origin zone")
    origin_tenant_id: str | None = Field(None, max_length=255, description="Task origin tenant ID")
    origin_reference: str | None = Field(None, max_length=512, description="Optional reference from the origin")
    started_at: datetime | None = Field(None, description="Task start timestamp (managed by the service)")
    completed_at: datetime | None = Field(None, description="Task completion timestamp (managed by the service)")
    celery_task_id: str | None = Field(None, description="Task Celery task ID (managed by the service)")
    service_task_id: str | None = Field(None, max_length=255, description="Task service task ID")
    retry_count: int | None = Field(None, ge=0, description="Task retry count (managed by the service)")
    progress: float | None = Field(None, ge=0.0, le=100.0, description="Task progress (0.0 to 100.0)")
    is_resumed: bool | None = Field(None, description="Whether task is being resumed")
    provider_type: ProviderType | None = Field(None, description="Provider type for task execution")
    active_provider_capabilities: Capabilities | None = Field(None, description="Active capabilities")
    queue_name: QueueName | None = Field(None, description="Task queue name")
    fallback_provider_type: ProviderType | None = Field(None, description="Fallback provider type")
    fallback_provider_config: dict[str, Any] | None = Field(None, description="Fallback provider-specific config")
    fallback_provider_capabilities: Capabilities | None = Field(None, description="Fallback provider capabilities")
    resume_attempt_count: int | None = Field(None, ge=0, description="Number of resume attempts")
    last_resume_attempt: datetime | None = Field(None, description="Last resume attempt timestamp")
    error_category: ErrorCategory | None = Field(None, description="Error category classification")
    service_requests: list[dict[str, Any]] | None = Field(
        None, max_length=1000, description="External service request log for observability"
    )


class LLMInteractionTaskPublicUpdate(BookkeepingUpdate):
    """Update of an LLM interaction task."""


class BackgroundRemovalTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a background removal task."""


class DetailEnhancerTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a detail enhancer task."""


class BackgroundFixTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a background fix task."""


class ImageAdjusterTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of an image adjuster task."""


class FaceEnhancerTaskPublicUpdate(TaskPublicUpdateBase):
    """Update of a face enhancer task."""


class GenerationTaskUpdate(BookkeepingUpdate):
    """Update of a generation task through ``PUT /api/v1/tasks/generation/{id}``."""

    fal_app_id: str | None = Field(None, max_length=255, description="FAL app ID")
    fal_request_id: str | None = Field(None, max_length=255, description="FAL request ID")
    subject_model_path: str | None = Field(None, max_length=1024, description="Path to the subject model")
    product_model_path: str | None = Field(None, max_length=1024, description="Path to the product model")
    style_model_path: str | None = Field(None, max_length=1024, description="Path to the style model")
    product2_model_path: str | None = Field(None, max_length=1024, description="Path to the second product model")
    subject_lora_weight: float | None = Field(None, ge=-10, le=10, description="Subject LoRA weight")
    product_lora_weight: float | None = Field(None, ge=-10, le=10, description="Product LoRA weight")
    style_lora_weight: float | None = Field(None, ge=-10, le=10, description="Style LoRA weight")
    product2_lora_weight: float | None = Field(None, ge=-10, le=10, description="Second product LoRA weight")
    reference_image_path: str | None = Field(None, max_length=4096, description="Path to the reference image")
    reference_image_strength: float | None = Field(
        None, ge=0.0, le=100.0, description="Influence of the reference image on generation (0-100)"
    )
    result_image_path: str | None = Field(None, max_length=4096, description="Path to the result image")


TaskUpdate = Annotated[
    GenerationTaskPublicUpdate
    | EditingTaskPublicUpdate
    | RefineTaskPublicUpdate
    | ExperimentalFalTaskPublicUpdate
    | VideoGenerationTaskPublicUpdate
    | LLMInteractionTaskPublicUpdate
    | BackgroundRemovalTaskPublicUpdate
    | DetailEnhancerTaskPublicUpdate
    | BackgroundFixTaskPublicUpdate
    | ImageAdjusterTaskPublicUpdate
    | FaceEnhancerTaskPublicUpdate,
    Field(union_mode="left_to_right", title="Update Data"),
]

UPDATE_MODELS: dict[TaskType, type[TaskPublicUpdateBase]] = {
    TaskType.GENERATION: GenerationTaskPublicUpdate,
    TaskType.EDITING: EditingTaskPublicUpdate,
    TaskType.REFINE: RefineTaskPublicUpdate,
    TaskType.EXPERIMENTAL_FAL: ExperimentalFalTaskPublicUpdate,
    TaskType.VIDEO_GENERATION: VideoGenerationTaskPublicUpdate,
    TaskType.LLM_INTERACTION: LLMInteractionTaskPublicUpdate,
    TaskType.BACKGROUND_REMOVAL: BackgroundRemovalTaskPublicUpdate,
    TaskType.DETAIL_ENHANCER: DetailEnhancerTaskPublicUpdate,
    TaskType.BACKGROUND_FIX: BackgroundFixTaskPublicUpdate,
    TaskType.IMAGE_ADJUSTER: ImageAdjusterTaskPublicUpdate,
    TaskType.FACE_ENHANCER: FaceEnhancerTaskPublicUpdate,
}

# Columns an update may change directly; other sent fields go to ``task_data`` or are refused.
SERVICE_MANAGED = frozenset(
    {"created_at", "updated_at", "started_at", "completed_at", "celery_task_id", "retry_count", "task_type"}
)


class TaskCleanupResponse(BaseModel):
    """Result of ``POST /api/v1/tasks/{id}/cleanup``."""

    task_id: uuid.UUID
    is_deleted: bool
    deleted_at: datetime | None
    deleted_paths: list[str]
