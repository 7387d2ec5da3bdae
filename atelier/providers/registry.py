"""Provider registry: which implementation runs a (provider type, task type), defaults and queues."""

from __future__ import annotations

import importlib
import logging

from pydantic import BaseModel

from atelier.providers.base import Provider, ProviderNotAvailableError
from atelier.providers.configs import CONFIG_MODELS
from atelier.settings import ProviderSettings, Settings
from atelier.tasks.enums import ProviderType, TaskType

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "inference"

# Spec: "If queue_name is not specified, determined by provider_type".
QUEUE_BY_PROVIDER: dict[ProviderType, str] = {
    ProviderType.FAL_STANDARD: "fal",
    ProviderType.FAL_SHOOTIFY_REFINER: "fal",
    ProviderType.FAL_GARMENT_FIXER: "fal",
    ProviderType.FASHN_STANDARD: "fashn",
    ProviderType.FREEPIK_MAGNIFIC: "freepik",
    ProviderType.FREEPIK_MAGNIFIC_PRECISION: "freepik",
    ProviderType.VERTEX: "vertex",
    ProviderType.AICORE: "llm",
    ProviderType.LOCAL: "local",
    ProviderType.NANO_BANANA_UPSCALER: "nano_banana",
    ProviderType.SARTIQ_ULTIMATE_REFINER: "sartiq",
    ProviderType.SARTIQ_ULTIMATE_FACE_FIXER: "sartiq",
    ProviderType.SARTIQ_ULTIMATE_GARMENT_FIXER: "sartiq",
}
TRAINING_QUEUE = "training"  # LoRA trainings (their own Celery task, ``training.run``)
ALL_QUEUES: tuple[str, ...] = (DEFAULT_QUEUE, *sorted({*QUEUE_BY_PROVIDER.values(), TRAINING_QUEUE}))

# The provider a task runs on when the request names none.
DEFAULT_PROVIDER: dict[TaskType, ProviderType] = {
    TaskType.IMAGE_ADJUSTER: ProviderType.LOCAL,
    TaskType.BACKGROUND_REMOVAL: ProviderType.LOCAL,
    TaskType.BACKGROUND_FIX: ProviderType.LOCAL,
    TaskType.DETAIL_ENHANCER: ProviderType.LOCAL,
    TaskType.FACE_ENHANCER: ProviderType.LOCAL,
    TaskType.GENERATION: ProviderType.FAL_STANDARD,
    TaskType.EDITING: ProviderType.FAL_STANDARD,
    TaskType.REFINE: ProviderType.FAL_SHOOTIFY_REFINER,
    TaskType.EXPERIMENTAL_FAL: ProviderType.FAL_STANDARD,
    TaskType.VIDEO_GENERATION: ProviderType.FAL_STANDARD,
    TaskType.LLM_INTERACTION: ProviderType.AICORE,
}


def queue_for(provider_type: ProviderType | None, override: str | None) -> str:
    """The Celery queue of a task: the explicit override, else by provider type, else ``inference``."""
    if override:
        return override
    return QUEUE_BY_PROVIDER.get(provider_type, DEFAULT_QUEUE) if provider_type else DEFAULT_QUEUE


def config_model(provider_type: ProviderType) -> type[BaseModel]:
    """The config schema of a provider type."""
    return CONFIG_MODELS[provider_type]


class ProviderRegistry:
    """Implementations by (provider type, task type). Built per runtime; tests may add their own."""

    def __init__(self) -> None:
        self._providers: dict[tuple[ProviderType, TaskType], Provider] = {}

    def register(self, provider: Provider) -> None:
        """Serve every task type the provider declares."""
        for task_type in provider.task_types:
            self._providers[(provider.provider_type, task_type)] = provider

    def get(self, provider_type: ProviderType, task_type: TaskType) -> Provider:
        """The implementation, or ProviderNotAvailableError naming what is missing."""
        provider = self._providers.get((provider_type, task_type))
        if provider is None:
            raise ProviderNotAvailableError(
                f"no {provider_type.value} provider is installed for {task_type.value} tasks "
                f"(installed: {self.describe() or 'none'})"
            )
        return provider

    def configure(self, settings: Settings) -> None:
        """Hand the deployment's settings to providers that read more than their per-task config.

        A provider with a ``configure(settings)`` method (e.g. LOCAL diffusion: its base model, LoRA folder) gets
        it once, when the runtime is built; the others are stateless.
        """
        for provider in {id(p): p for p in self._providers.values()}.values():
            hook = getattr(provider, "configure", None)
            if callable(hook):
                hook(settings)

    def describe(self) -> str:
        """Human list of installed (provider, task type) pairs."""
        return ", ".join(sorted(f"{p.value}/{t.value}" for p, t in self._providers))


def default_registry(plugins: list[str] | None = None, settings: ProviderSettings | None = None) -> ProviderRegistry:
    """The registry with every built-in provider, plus ``module:function`` plugins called with it.

    Remote providers are built with ``settings`` (their base URLs and credentials); default settings
    point at the public services.
    """
    from atelier.providers.local.provider import LocalImageAdjuster
    from atelier.providers.local.segmentation import LocalBackgroundFix, LocalBackgroundRemoval
    from atelier.providers.remote import remote_providers

    registry = ProviderRegistry()
    for provider in (LocalImageAdjuster(), LocalBackgroundRemoval(), LocalBackgroundFix()):
        registry.register(provider)
    for remote in remote_providers(settings or ProviderSettings()):
        registry.register(remote)
    try:  # OpenCV and scikit-image come with the `ml` extra; without them these tasks fail as not available
        from atelier.providers.local.enhancers import LocalDetailEnhancer, LocalFaceEnhancer
    except ImportError as exc:
        log.warning("face/detail enhancers not installed (%s): pip install 'atelier[ml]'", exc)
    else:
        registry.register(LocalFaceEnhancer())
        registry.register(LocalDetailEnhancer())
    try:  # torch, diffusers and peft (the `ml` extra): LOCAL GENERATION/EDITING; settings read on first run
        from atelier.providers.local.diffusion import LocalDiffusion
    except ImportError as exc:
        log.warning("LOCAL generation/editing not installed (%s): pip install 'atelier[ml]'", exc)
    else:
        registry.register(LocalDiffusion())
    for entry in plugins or []:
        load_plugin(registry, entry)
    return registry


def load_plugin(registry: ProviderRegistry, entry: str) -> None:
    """Import ``module:function`` and call it with the registry (it registers its providers)."""
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ValueError(f"provider plugin {entry!r} must look like 'package.module:function'")
    register = getattr(importlib.import_module(module_name), attr)
    register(registry)
