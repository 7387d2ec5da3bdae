"""LOCAL BACKGROUND_REMOVAL and BACKGROUND_FIX: rembg segmentation plus numpy recolouring."""

from __future__ import annotations

import json
from typing import ClassVar

from atelier.providers.base import ProviderContext, ProviderResult
from atelier.providers.configs import LocalProviderConfig
from atelier.providers.local.background_fix import FixParams, fix_background
from atelier.providers.local.background_removal import remove_background, subject_mask
from atelier.providers.local.provider import store_image
from atelier.tasks.enums import ProviderType, TaskType


def _model(ctx: ProviderContext) -> str:
    config = ctx.config
    assert isinstance(config, LocalProviderConfig)
    return config.rembg_model


class LocalBackgroundRemoval:
    """BACKGROUND_REMOVAL with rembg: one RGBA cut-out per input, in input order."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.BACKGROUND_REMOVAL})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Segment every input; progress after each; cancellation checked between images."""
        sources = [str(s) for s in ctx.inputs.get("input_image_paths") or []]
        results: list[str] = []
        for index, source in enumerate(sources):
            ctx.check_cancelled()
            image = ctx.load_image(source, f"input_image_paths[{index}]")
            cutout = remove_background(image, _model(ctx))
            results.append(store_image(ctx, cutout, None, f"result_{index}"))
            ctx.progress(100.0 * (index + 1) / len(sources))
        return ProviderResult(outputs={"result_image_paths": results})


class LocalBackgroundFix:
    """BACKGROUND_FIX: rembg subject mask, then the requested recolouring strategy."""

    provider_type: ClassVar[ProviderType] = ProviderType.LOCAL
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.BACKGROUND_FIX})

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Load both images, segment the subject, recolour the background, store the result."""
        base = ctx.load_image(str(ctx.inputs["base_image_path"]), "base_image_path")
        palette = ctx.load_image(str(ctx.inputs["palette_image_path"]), "palette_image_path")
        ctx.progress(10.0)
        ctx.check_cancelled()
        mask = subject_mask(base, _model(ctx))
        ctx.progress(60.0)
        ctx.check_cancelled()
        params = FixParams(
            strategy=str(ctx.inputs.get("strategy") or "COLOR_SHIFT"),
            edge_blur_sigma=float(ctx.inputs.get("edge_blur_sigma", 20.0)),
            light_threshold=int(ctx.inputs.get("light_threshold", 220)),
            shadow_threshold=int(ctx.inputs.get("shadow_threshold", 150)),
            mask_expansion_percentage=float(ctx.inputs.get("mask_expansion_percentage", 0.005)),
        )
        fixed, report = fix_background(base, mask, palette, params)
        report_json = json.loads(json.dumps(report, default=float))  # numpy scalars → plain JSON numbers
        path = store_image(ctx, fixed, base.format)
        return ProviderResult(outputs={"result_image_path": path, "background_fix_report": report_json})
