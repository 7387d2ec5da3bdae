"""Every provider type of the spec has an implementation in the default registry."""

from __future__ import annotations

import pytest

from atelier.providers.base import ProviderNotAvailableError
from atelier.providers.registry import default_registry
from atelier.tasks.enums import ProviderType, TaskType

SERVED = {
    ProviderType.FAL_STANDARD: {
        TaskType.GENERATION,
        TaskType.EDITING,
        TaskType.REFINE,
        TaskType.VIDEO_GENERATION,
        TaskType.EXPERIMENTAL_FAL,
    },
    ProviderType.FAL_SHOOTIFY_REFINER: {TaskType.REFINE},
    ProviderType.FAL_GARMENT_FIXER: {TaskType.EDITING},
    ProviderType.FASHN_STANDARD: {TaskType.EDITING},
    ProviderType.FREEPIK_MAGNIFIC: {TaskType.REFINE},
    ProviderType.FREEPIK_MAGNIFIC_PRECISION: {TaskType.REFINE},
    ProviderType.VERTEX: {TaskType.GENERATION, TaskType.EDITING},
    ProviderType.AICORE: {TaskType.LLM_INTERACTION},
    ProviderType.NANO_BANANA_UPSCALER: {TaskType.REFINE},
    ProviderType.SARTIQ_ULTIMATE_REFINER: {TaskType.REFINE},
    ProviderType.SARTIQ_ULTIMATE_FACE_FIXER: {TaskType.FACE_ENHANCER},
    ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER: {TaskType.DETAIL_ENHANCER},
    ProviderType.LOCAL: {
        TaskType.IMAGE_ADJUSTER,
        TaskType.BACKGROUND_REMOVAL,
        TaskType.BACKGROUND_FIX,
        TaskType.FACE_ENHANCER,
        TaskType.DETAIL_ENHANCER,
        TaskType.GENERATION,  # diffusers (the `ml` extra)
        TaskType.EDITING,
    },
}


def test_every_provider_type_serves_its_task_types() -> None:
    registry = default_registry()
    assert set(SERVED) == set(ProviderType)
    for provider_type, task_types in SERVED.items():
        for task_type in TaskType:
            if task_type in task_types:
                assert registry.get(provider_type, task_type).provider_type is provider_type
            else:
                with pytest.raises(ProviderNotAvailableError):
                    registry.get(provider_type, task_type)
