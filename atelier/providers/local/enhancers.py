"""LOCAL FACE_ENHANCER and DETAIL_ENHANCER: OpenCV detection, local enhancement, feathered paste-back."""

from __future__ import annotations

from typing import Any, ClassVar

from atelier.providers.base import ProviderContext, ProviderResult
from atelier.providers.local.detail_enhancer import DetailParams, enhance_detail
from atelier.providers.local.face_enhancer import FaceParams, enhance_faces
from atelier.providers.local.provider import store_image
from atelier.tasks.enums import ProviderType, TaskType


def _overrides(ctx: ProviderContext, allowed: dict[str, type]) -> dict[str, Any]:
    """Tuning knobs a task may pass in its ``config`` (typed: a wrong type is an input error)."""
    values: dict[str, Any] = {}
    for name, kind in allowed.items():
        if name in ctx.task_config:
            value = ctx.task_config[name]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"config.{name} must be a number")
            values[name] = kind(value)
    return values


class LocalFaceEnhancer:
    """FACE_ENHANCER: Haar-cascade face detection, CLAHE + unsharp on each face, SSIM quality gate."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.FACE_ENHANCER})
    KNOBS: ClassVar[dict[str, type]] = {
        "expand_percent": float,
        "feather_px": int,
        "ssim_threshold": float,
        "max_attempts": int,
        "max_faces": int,
    }

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Detect, enhance, gate, paste back; the result fields report what really happened."""
        image = ctx.load_image(str(ctx.inputs["input_image_path"]), "input_image_path")
        ctx.progress(10.0)
        result = enhance_faces(image, FaceParams(**_overrides(ctx, self.KNOBS)), ctx.check_cancelled)
        ctx.progress(80.0)
        return ProviderResult(
            outputs={
                "result_image_path": store_image(ctx, result.image, image.format),
                "face_detected": result.face_detected,
                "fallback_used": result.fallback_used,
                "attempts_used": result.attempts_used,
                "final_ssim_score": result.final_ssim_score,
                "final_lpips_score": result.final_lpips_score,
                "final_dists_score": result.final_dists_score,
                "faces": [list(box) for box in result.faces],
                "enhancement_notes": list(result.notes),
            }
        )


class LocalDetailEnhancer:
    """DETAIL_ENHANCER: find the reference detail in the image and blend it back in the image's own light."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.DETAIL_ENHANCER})
    KNOBS: ClassVar[dict[str, type]] = {"min_score": float, "feather_px": int}

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Locate (multi-scale template match), colour-match, feather-blend; fall back to the input if not found."""
        base = ctx.load_image(str(ctx.inputs["base_image_path"]), "base_image_path")
        reference = ctx.load_image(str(ctx.inputs["reference_image_path"]), "reference_image_path")
        ctx.progress(20.0)
        params = DetailParams(**_overrides(ctx, self.KNOBS))
        label = ctx.inputs.get("detail_label")
        result = enhance_detail(base, reference, params, label, ctx.check_cancelled)
        ctx.progress(80.0)
        return ProviderResult(
            outputs={
                "result_image_path": store_image(ctx, result.image, base.format),
                "fallback_used": result.fallback_used,
                # a location below min_score was rejected: it is not where the detail is
                "detail_location": list(result.located) if result.located and not result.fallback_used else None,
                "match_score": result.match_score,
                "enhancement_notes": list(result.notes),
            }
        )
