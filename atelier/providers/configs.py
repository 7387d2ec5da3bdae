"""Provider configuration models (the spec's ``*ProviderConfig`` / ``*Config`` schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from atelier.tasks.enums import ProviderType

Threshold = Field(0.0, ge=0.0, le=1.0, description="Similarity threshold; 0 disables the check.")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FalStandardConfig(_Config):
    """fal.ai queue app."""

    provider_type: Literal[ProviderType.FAL_STANDARD] = ProviderType.FAL_STANDARD
    fal_app_id: str | None = Field(None, description="FAL application id, e.g. fal-ai/flux/dev.")
    fal_request_id: str | None = Field(None, description="FAL request ID for tracking.")
    additional_static_params: dict[str, Any] | None = Field(None, description="Passed directly to the FAL API.")


class FalShootifyRefinerConfig(_Config):
    """fal.ai refiner app."""

    provider_type: Literal[ProviderType.FAL_SHOOTIFY_REFINER] = ProviderType.FAL_SHOOTIFY_REFINER
    fal_app_id: str | None = Field(None, description="FAL application ID for refinement.")
    fal_request_id: str | None = Field(None, description="FAL request ID for tracking.")


class FalGarmentFixerConfig(_Config):
    """fal.ai garment fixer."""

    provider_type: Literal[ProviderType.FAL_GARMENT_FIXER] = ProviderType.FAL_GARMENT_FIXER


class FashnStandardConfig(_Config):
    """FASHN try-on API."""

    provider_type: Literal[ProviderType.FASHN_STANDARD] = ProviderType.FASHN_STANDARD
    fashn_task_id: str | None = Field(None, description="FASHN prediction id, for polling and resumability.")
    max_image_height: int = Field(2000, ge=64, le=8192, description="Max height for preprocessing.")
    max_wait_seconds: int | None = Field(None, ge=1, description="Default: the editing task timeout.")
    poll_interval: int = Field(2, ge=1, le=60, description="Seconds between status polls.")


class FreepikMagnificConfig(_Config):
    """Freepik Magnific upscaler."""

    provider_type: Literal[ProviderType.FREEPIK_MAGNIFIC] = ProviderType.FREEPIK_MAGNIFIC
    creativity: int = Field(0, ge=-10, le=10)
    fractality: int = Field(0, ge=-10, le=10)
    hdr: int = Field(0, ge=-10, le=10)
    resemblance: int = Field(0, ge=-10, le=10)
    engine: str = Field("automatic", description="Magnific engine.")
    optimized_for: str = Field("standard", description="Magnific optimisation profile.")
    defaultPrompt: str | None = Field(None, description="Used if no prompt is provided.")  # noqa: N815 - spec name


class FreepikMagnificPrecisionConfig(_Config):
    """Freepik Magnific precision upscaler."""

    provider_type: Literal[ProviderType.FREEPIK_MAGNIFIC_PRECISION] = ProviderType.FREEPIK_MAGNIFIC_PRECISION
    sharpen: int = Field(7, ge=0, le=100)
    smart_grain: int = Field(7, ge=0, le=100)
    ultra_detail: int = Field(30, ge=0, le=100)
    defaultPrompt: str | None = Field(None, description="Used if no prompt is provided.")  # noqa: N815 - spec name


class VertexConfig(_Config):
    """Google Vertex / Gemini image model."""

    provider_type: Literal[ProviderType.VERTEX] = ProviderType.VERTEX
    aspect_ratio: Literal["1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"] | None = None
    image_size: Literal["1K", "2K", "4K"] = "1K"
    model: str | None = Field(None, description="Model override.")
    system_instructions: str | None = Field(None, description="Default: fashion specialist prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)


class AiCoreProviderConfig(_Config):
    """LLM providers behind one interface."""

    provider_type: Literal[ProviderType.AICORE] = ProviderType.AICORE
    ai_provider: Literal["openai", "anthropic", "gemini", "ollama"] = "openai"
    model: str = Field("gpt-4o-mini", description="Model name.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)


class LocalProviderConfig(_Config):
    """Work done on this machine."""

    provider_type: Literal[ProviderType.LOCAL] = ProviderType.LOCAL
    rembg_model: Literal[
        "u2net",
        "u2netp",
        "u2net_human_seg",
        "u2net_cloth_seg",
        "silueta",
        "isnet-general-use",
        "isnet-anime",
        "sam",
    ] = Field("u2netp", description="Rembg model for background removal (u2netp ships with the service).")


class NanoBananaUpscalerConfig(_Config):
    """Nano Banana upscaler with consistency checks."""

    provider_type: Literal[ProviderType.NANO_BANANA_UPSCALER] = ProviderType.NANO_BANANA_UPSCALER
    default_prompt: str | None = None
    max_retries: int = Field(2, ge=0, le=10)
    ssim_threshold: float = Threshold


class SartiqUltimateRefinerConfig(_Config):
    """Sartiq tiled refiner."""

    provider_type: Literal[ProviderType.SARTIQ_ULTIMATE_REFINER] = ProviderType.SARTIQ_ULTIMATE_REFINER
    ssim_threshold: float = Threshold
    lpips_threshold: float = Threshold
    dists_threshold: float = Threshold
    face_expand_percent: float = Field(0.5, ge=0.0, le=5.0)
    feather_px: int = Field(32, ge=0, le=1024)
    max_retries: int = Field(2, ge=0, le=10)
    max_workers: int | None = Field(None, ge=1)
    num_tiles: int = Field(4, ge=1, le=64)
    save_debug_tiles: bool = False
    version: Literal["1", "2"] = "1"


class SartiqUltimateFaceFixerConfig(_Config):
    """Sartiq face fixer."""

    provider_type: Literal[ProviderType.SARTIQ_ULTIMATE_FACE_FIXER] = ProviderType.SARTIQ_ULTIMATE_FACE_FIXER
    ssim_threshold: float = Threshold
    lpips_threshold: float = Threshold
    dists_threshold: float = Threshold
    expand_percent: float = Field(0.5, ge=0.0, le=5.0)
    face_prompt: str | None = None
    feather_px: int = Field(16, ge=0, le=1024)
    max_retries: int = Field(2, ge=0, le=10)
    save_debug_images: bool = False


class SartiqUltimateGarmentFixerConfig(_Config):
    """Sartiq garment fixer."""

    provider_type: Literal[ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER] = ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER
    ssim_threshold: float = Threshold
    lpips_threshold: float = Threshold
    dists_threshold: float = Threshold
    bbox_expand_percent: float = Field(0.05, ge=0.0, le=5.0)
    feather_px: int = Field(16, ge=0, le=1024)
    max_retries: int = Field(2, ge=0, le=10)
    split_threshold: float = Field(2.0, gt=0.0)
    save_debug_images: bool = False


CONFIG_MODELS: dict[ProviderType, type[BaseModel]] = {
    ProviderType.FAL_STANDARD: FalStandardConfig,
    ProviderType.FAL_SHOOTIFY_REFINER: FalShootifyRefinerConfig,
    ProviderType.FAL_GARMENT_FIXER: FalGarmentFixerConfig,
    ProviderType.FASHN_STANDARD: FashnStandardConfig,
    ProviderType.FREEPIK_MAGNIFIC: FreepikMagnificConfig,
    ProviderType.FREEPIK_MAGNIFIC_PRECISION: FreepikMagnificPrecisionConfig,
    ProviderType.VERTEX: VertexConfig,
    ProviderType.AICORE: AiCoreProviderConfig,
    ProviderType.LOCAL: LocalProviderConfig,
    ProviderType.NANO_BANANA_UPSCALER: NanoBananaUpscalerConfig,
    ProviderType.SARTIQ_ULTIMATE_REFINER: SartiqUltimateRefinerConfig,
    ProviderType.SARTIQ_ULTIMATE_FACE_FIXER: SartiqUltimateFaceFixerConfig,
    ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER: SartiqUltimateGarmentFixerConfig,
}
