"""LOCAL provider implementations that run on this machine's CPU."""

from __future__ import annotations

import io
import math
from typing import ClassVar

from PIL import Image

from atelier.core.inputs import DraftRequest
from atelier.providers.base import ProviderContext, ProviderResult
from atelier.providers.local.image_adjuster import (
    AUTO_PAD_THRESHOLD,
    AdjustParams,
    Margins,
    adjust_image,
    margins_from_reference,
    resolve_target,
)
from atelier.tasks.enums import ProviderType, TaskType


def encode_image(image: Image.Image, source_format: str | None) -> tuple[bytes, str, str]:
    """Encode for storage: JPEG stays JPEG when there is no alpha, everything else becomes PNG."""
    buffer = io.BytesIO()
    if source_format == "JPEG" and image.mode in {"RGB", "L"}:
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
        return buffer.getvalue(), "jpg", "image/jpeg"
    image.save(buffer, format="PNG", compress_level=1)  # level 1: ~5x faster than 6, files ~10% larger
    return buffer.getvalue(), "png", "image/png"


def store_image(ctx: ProviderContext, image: Image.Image, source_format: str | None, stem: str = "result") -> str:
    """Encode an output (see ``encode_image``) and save it in the task's folder; return its storage path."""
    data, ext, content_type = encode_image(image, source_format)
    return ctx.storage.save(ctx.output_path(f"{stem}.{ext}"), data, content_type).path


def adjust_params(inputs: dict[str, object], margins: Margins | None) -> AdjustParams:
    """Build the algorithm's parameters from the task's stored inputs."""
    return AdjustParams(
        mode=inputs.get("mode") or "auto",  # type: ignore[arg-type]
        aspect_ratio=inputs.get("aspect_ratio"),  # type: ignore[arg-type]
        target_width=inputs.get("target_width"),  # type: ignore[arg-type]
        target_height=inputs.get("target_height"),  # type: ignore[arg-type]
        cropping_position=inputs.get("cropping_position") or "center",  # type: ignore[arg-type]
        margins=margins,
        resampling=inputs.get("resampling") or "lanczos",  # type: ignore[arg-type]
        scaling_proportions=inputs.get("scaling_proportions") or "fit",  # type: ignore[arg-type]
        tolerance=float(inputs.get("tolerance") or 0.0),  # type: ignore[arg-type]
    )


def output_scale(width: int, height: int, params: AdjustParams) -> float | None:
    """Output pixels per source pixel of a crop/pad/scale to an exact size; None when no exact size is asked."""
    ratio, size = resolve_target(width, height, params)
    if size is None:
        return None
    target_w, target_h = size
    mode = params.mode
    if mode == "auto":
        mode = "pad" if abs(width / height - ratio) / ratio > AUTO_PAD_THRESHOLD else "crop"
    if mode == "crop":
        return target_w / min(width, height * ratio)
    if mode == "pad":
        return target_w / max(width, height * ratio)
    return {"height": target_h / height, "width": target_w / width}.get(
        params.scaling_proportions, min(target_w / width, target_h / height)
    )


def draft_request(params: AdjustParams) -> DraftRequest:
    """Ask the JPEG decoder for the smallest size that still has one source pixel per output pixel."""

    def request(width: int, height: int) -> tuple[int, int] | None:
        scale = output_scale(width, height, params)
        if scale is None or scale > 0.5:  # shrink-on-load reduces by 2, 4 or 8 at least
            return None
        return math.ceil(width * scale), math.ceil(height * scale)

    return request


def explicit_margins(inputs: dict[str, object]) -> Margins | None:
    """Margins given in the request, or None when none of the four is set."""
    names = ("margin_top", "margin_bottom", "margin_left", "margin_right")
    values = [inputs.get(n) for n in names]
    if all(v is None for v in values):
        return None
    top, bottom, left, right = (float(v or 0.0) for v in values)  # type: ignore[arg-type]
    return Margins(top=top, bottom=bottom, left=left, right=right)


class LocalImageAdjuster:
    """IMAGE_ADJUSTER on Pillow: crop, pad or scale to a ratio/size, optionally keeping subject margins."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.IMAGE_ADJUSTER})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Load (JPEG shrink-on-load when the result is much smaller) → (derive margins) → adjust → store."""
        params = adjust_params(ctx.inputs, explicit_margins(ctx.inputs))
        draft = None if params.margins is not None or ctx.inputs.get("reference_image_path") else draft_request(params)
        image = ctx.load_image(str(ctx.inputs["input_image_path"]), "input_image_path", draft)
        source_format = image.format
        ctx.progress(20.0)
        ctx.check_cancelled()
        margins = explicit_margins(ctx.inputs)
        reference = ctx.inputs.get("reference_image_path")
        if reference:
            margins = margins_from_reference(ctx.load_image(str(reference), "reference_image_path"))
        ctx.check_cancelled()
        result = adjust_image(image, adjust_params(ctx.inputs, margins))  # AdjustError is a ValueError: no retry
        ctx.progress(70.0)
        ctx.check_cancelled()
        return ProviderResult(
            outputs={
                "result_image_path": store_image(ctx, result.image, source_format),
                "result_width": result.image.width,
                "result_height": result.image.height,
                "adjustment_applied": result.applied,
            }
        )
