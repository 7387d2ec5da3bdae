"""Fixtures of the evaluation tests: the vision-LLM fake on a real port, settings pointing at it, test images."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from skimage import data as skdata

from atelier.evaluation.schemas import EvaluationRequest, Framing, ViewAngle
from tests.fakes.server import serve_fake
from tests.fakes.vision_llm import GOOGLE_KEY, OPENAI_KEY, VisionLLMFake, create_vision_app


@pytest.fixture(scope="module")
def vision_server() -> Iterator[VisionLLMFake]:
    """One fake server per test module (starting uvicorn costs more than the tests)."""
    with serve_fake(VisionLLMFake(), create_vision_app) as fake:
        yield fake


@pytest.fixture
def vision(vision_server: VisionLLMFake) -> VisionLLMFake:
    """The shared fake, reset for this test."""
    vision_server.reset()
    return vision_server


def llm_providers(base_url: str, call_attempts: int = 1) -> dict[str, Any]:
    """Provider settings pointing OpenAI, Gemini and Vertex (express mode) at the fake."""
    common = {"base_url": base_url, "timeout_seconds": 10, "call_attempts": call_attempts}
    return {
        "openai": {**common, "api_key": OPENAI_KEY},
        "gemini": {**common, "api_key": GOOGLE_KEY},
        "vertex": {**common, "api_key": GOOGLE_KEY, "location": "global"},
    }


def request(**overrides: Any) -> EvaluationRequest:
    """A request expecting a full-body front shot (no image: backends get theirs directly)."""
    values: dict[str, Any] = {"expected_framing": Framing.FULL_BODY, "expected_view_angle": ViewAngle.FRONT}
    values.update(overrides)
    return EvaluationRequest(**values)


def sk_image(name: str) -> Image.Image:
    """A real photograph shipped inside scikit-image, as RGB."""
    array: NDArray[Any] = getattr(skdata, name)()
    return Image.fromarray(array).convert("RGB")


def side_by_side(*images: Image.Image, gutter: int = 0) -> Image.Image:
    """Photos of one height put next to each other, with an optional white gutter: a collage."""
    height = max(image.height for image in images)
    parts: list[NDArray[np.uint8]] = []
    for index, image in enumerate(images):
        if index and gutter:
            parts.append(np.full((height, gutter, 3), 255, dtype=np.uint8))
        scaled = image.resize((round(image.width * height / image.height), height))
        parts.append(np.asarray(scaled, dtype=np.uint8))
    return Image.fromarray(np.concatenate(parts, axis=1))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    """The image's bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
