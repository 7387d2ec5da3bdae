"""Scripted providers for engine tests: each attempt does what ``config.script[attempt-1]`` says.

They do real work on the success path (render a PNG with Pillow and store it) so the whole output path
is exercised; the failure steps raise the exception types real providers raise. Every completed run also
leaves a marker under ``side-effects/<task_id>/`` in the tenant's storage, so tests can count side effects
even when the provider ran in another process.
"""

from __future__ import annotations

import io
import time
import uuid
from typing import ClassVar

from PIL import Image

from atelier.providers.base import (
    ProviderContext,
    ProviderFatalError,
    ProviderResult,
    ProviderRetryableError,
)
from atelier.providers.registry import ProviderRegistry
from atelier.tasks.enums import ProviderType, TaskType


def register(registry: ProviderRegistry) -> None:
    """Provider plugin entry point (``ATELIER_PROVIDERS__PLUGINS=["tests.fakes.providers:register"]``)."""
    registry.register(ScriptedProvider())
    registry.register(FallbackProvider())


class ScriptedProvider:
    """A generation provider driven by ``task config["script"]`` (ok|retry|fatal|value|crash|slow|block)."""

    provider_type: ClassVar[ProviderType] = ProviderType.FAL_STANDARD
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.GENERATION})
    colour: ClassVar[str] = "red"

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Follow the script step of this attempt."""
        script: list[str] = ctx.task_config.get("script", ["ok"])
        step = script[min(ctx.attempt, len(script)) - 1]
        ctx.log_request({"provider": self.provider_type.value, "attempt": ctx.attempt, "step": step})
        if step == "retry":
            raise ProviderRetryableError("upstream returned 503", retry_after=None)
        if step == "fatal":
            raise ProviderFatalError("upstream rejected the request")
        if step == "value":
            raise ValueError("prompt is not acceptable")
        if step == "crash":
            raise RuntimeError("provider bug")
        if step == "slow":
            self._slow(ctx)
        if step == "block":  # busy without ever calling back (a native call): only the heartbeat keeps the lease
            time.sleep(float(ctx.task_config.get("slow_seconds", 10)))
        return self._render(ctx)

    def _slow(self, ctx: ProviderContext) -> None:
        deadline = time.monotonic() + float(ctx.task_config.get("slow_seconds", 10))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            ctx.progress(50.0)
            time.sleep(0.02)

    def _render(self, ctx: ProviderContext) -> ProviderResult:
        width = int(ctx.inputs.get("width") or 32)
        height = int(ctx.inputs.get("height") or 32)
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), self.colour).save(buffer, format="PNG")
        stored = ctx.storage.save(ctx.output_path("result.png"), buffer.getvalue(), "image/png")
        ctx.storage.save(f"side-effects/{ctx.task_id}/{uuid.uuid4().hex}.png", buffer.getvalue(), "image/png")
        return ProviderResult(outputs={"result_image_path": stored.path, "fal_request_id": f"req-{ctx.attempt}"})


class FallbackProvider(ScriptedProvider):
    """The same scripted behaviour, registered as VERTEX, rendering blue."""

    provider_type: ClassVar[ProviderType] = ProviderType.VERTEX
    colour: ClassVar[str] = "blue"

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Fallback always succeeds unless told otherwise by ``fallback_script``."""
        script: list[str] = ctx.task_config.get("fallback_script", ["ok"])
        if script[min(ctx.attempt, len(script)) - 1] == "fatal":
            raise ProviderFatalError("fallback failed too")
        return self._render(ctx)


def register_fallback(registry: ProviderRegistry) -> None:
    """Only the scripted VERTEX provider: a fallback target for tests of real primary providers."""
    registry.register(FallbackProvider())
