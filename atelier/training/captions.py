"""Captions of training images per ``CaptioningStrategy`` (the VLM one calls a vision model through AiCore)."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from atelier.providers.base import ProviderContext
from atelier.providers.configs import AiCoreProviderConfig
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import TaskType
from atelier.training.enums import CaptioningStrategy

if TYPE_CHECKING:
    from atelier.core.runtime import Runtime

DEFAULT_TEMPLATE = "a photo of {trigger}"
DEFAULT_VLM_PROMPT = (
    "Write one short training caption for this image: describe the subject's appearance, pose, framing, lighting "
    "and background in one line of at most 40 words, no preamble."
)
MAX_CAPTION_CHARS = 400
VLM_EDGE = 768  # images are shrunk to this longest side before they are sent


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().strip('"').strip()[:MAX_CAPTION_CHARS]


def _png(image: Image.Image) -> bytes:
    copy = image.copy()
    copy.thumbnail((VLM_EDGE, VLM_EDGE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class _WithImage(TenantStorage):
    """The tenant's storage, plus one in-memory image the captioning call reads as its input."""

    def __init__(self, storage: TenantStorage, tenant: str, path: str, data: bytes) -> None:
        super().__init__(storage.backend, tenant)
        self._path, self._data = path, data

    def read(self, path: str) -> bytes:
        return self._data if path == self._path else super().read(path)


def caption_images(
    runtime: Runtime,
    storage: TenantStorage,
    tenant: str,
    images: list[Image.Image],
    *,
    trigger: str,
    strategy: str,
    prompt: str | None,
    check: Callable[[], None],
) -> list[str]:
    """One caption per image; the trigger word always leads it."""
    kind = CaptioningStrategy(strategy)
    if kind is CaptioningStrategy.TRIGGER_ONLY:
        return [trigger] * len(images)
    if kind is CaptioningStrategy.TEMPLATE:
        return [_one_line((prompt or DEFAULT_TEMPLATE).replace("{trigger}", trigger))] * len(images)
    return [f"{trigger}, {_describe(runtime, storage, tenant, image, prompt, check)}" for image in images]


def _describe(
    runtime: Runtime,
    storage: TenantStorage,
    tenant: str,
    image: Image.Image,
    prompt: str | None,
    check: Callable[[], None],
) -> str:
    """Ask the configured vision model for a one-line description of ``image``."""
    from atelier.providers.remote.aicore import AiCoreProvider

    settings = runtime.settings
    vendor, model = settings.training.captioning_provider, settings.training.captioning_model
    if not vendor or not model:
        raise ValueError("captioning strategy 'vlm' needs ATELIER_TRAINING__CAPTIONING_PROVIDER and _MODEL")
    check()

    def no_image(*_args: Any, **_kwargs: Any) -> Image.Image:
        raise ValueError("captioning passes its image inline")

    path = f"training/captioning/{uuid.uuid4().hex}.png"  # never written: served from memory
    ctx = ProviderContext(
        task_id=uuid.uuid4(),
        task_type=TaskType.LLM_INTERACTION,
        inputs={"prompt": prompt or DEFAULT_VLM_PROMPT, "input_images": [path]},
        config=AiCoreProviderConfig(ai_provider=vendor, model=model, temperature=0.2, max_tokens=200),
        capabilities=[],
        task_config={},
        storage=_WithImage(storage, tenant, path, _png(image)),
        output_prefix="training/captions",
        attempt=1,
        http=runtime.http,
        load_image=no_image,
        progress=lambda _p: None,
        check_cancelled=check,
        log_request=lambda _r: None,
        fetch_limits=runtime.fetch_limits,
    )
    result = AiCoreProvider(settings.providers).run(ctx)
    text = _one_line(str(result.outputs.get("result_text") or ""))
    if not text:
        raise ValueError("the captioning model returned an empty caption")
    return text
