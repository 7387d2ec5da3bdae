"""NANO_BANANA_UPSCALER: REFINE by a Gemini image model ("Nano Banana") on Vertex, with a consistency check.

Protocol: the Vertex ``generateContent`` call of ``atelier.providers.remote.vertex`` (same endpoint, same
service-account or express-mode auth, same answer handling), with ``settings.nano_banana_model`` as the model:

- request: ``contents[0].parts`` = the upscale prompt (the task's ``upscale_prompt``, else the config's
  ``default_prompt``, else ``DEFAULT_PROMPT``) and the base image inline (``inlineData``);
  ``systemInstruction`` = ``SYSTEM_INSTRUCTION``; ``generationConfig`` = ``temperature`` ``TEMPERATURE``,
  ``topP`` ``TOP_P``, ``seed`` (``upscale_seed`` + attempt index, when given), ``responseModalities``
  ``["TEXT", "IMAGE"]``, ``imageConfig`` = ``aspectRatio`` nearest to the input's and ``imageSize`` "2K" when
  the wanted long side is at most 2048 px, else "4K" (left out for the ``gemini-2.*`` models, see vertex.py);
- answer: the first ``inlineData`` image; refusals are ``CONTENT_REJECTED`` (fatal), an answer without an
  image is retryable.

The wanted size is ``target_width`` × ``target_height`` (one of them alone keeps the input's aspect ratio),
else the input size × ``upscale_factor`` (2 when not given; 1 when ``upscale_enabled`` is false).

Consistency check: each answer is downscaled (Lanczos) to the input size and compared with the input by
grayscale SSIM (``skimage.metrics.structural_similarity``). With ``ssim_threshold`` > 0, an answer scoring below
it is discarded and the model is asked again, up to ``max_retries`` extra calls; when every answer fails, the run
fails (``ProviderFatalError`` naming the best score and the threshold, so a fallback provider can take over).
``ssim_threshold`` 0 disables the check (the score is still reported when scikit-image is installed). The
accepted answer is resized (Lanczos) to the wanted size and stored. Additive outputs: ``final_ssim_score``
(of the accepted answer) and ``attempts_used`` (generateContent calls made by this run).

Like every Gemini call this is synchronous: there is no remote job to resume; a resumed task calls again.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits, open_image
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult
from atelier.providers.configs import NanoBananaUpscalerConfig
from atelier.providers.local.provider import encode_image
from atelier.providers.remote.media import Payload, image_payload, store_result_image
from atelier.providers.remote.vertex import (
    SERVICE,
    GeminiClient,
    answer_image,
    nearest_aspect_ratio,
    request_body,
)
from atelier.settings import ProviderSettings, VertexSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

DEFAULT_PROMPT = (
    "Upscale this image faithfully to a higher resolution. Keep every detail exactly as it is: the same "
    "composition, framing, people, faces, pose, garments, fabric textures, prints, logos, text and colours. "
    "Only increase sharpness and resolution; do not add, remove, move or restyle anything."
)
SYSTEM_INSTRUCTION = (
    "You are an image restoration specialist. You return the given image at a higher resolution, pixel-faithful "
    "to the original: you never change the content, the layout or the colours. Always answer with an image."
)
TEMPERATURE = 0.4  # low: the answer must stay close to the input
TOP_P = 0.95
MAX_2K_SIDE = 2048  # wanted long side up to this asks for imageSize "2K", above it "4K"
MIN_SSIM_SIDE = 7  # scikit-image's default SSIM window


def wanted_size(inputs: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The output size the task asks for (see the module docstring)."""
    target_w, target_h = inputs.get("target_width"), inputs.get("target_height")
    if target_w and target_h:
        return int(target_w), int(target_h)
    if target_w:
        return int(target_w), max(1, round(int(target_w) * height / width))
    if target_h:
        return max(1, round(int(target_h) * width / height)), int(target_h)
    factor = float(inputs.get("upscale_factor") or 2) if inputs.get("upscale_enabled", True) else 1.0
    return max(1, round(width * factor)), max(1, round(height * factor))


def image_size_for(size: tuple[int, int]) -> str:
    """``imageSize`` for a wanted output size: "2K" up to a 2048 px long side, else "4K"."""
    return "2K" if max(size) <= MAX_2K_SIDE else "4K"


def consistency_score(original: Image.Image, answer: Image.Image) -> float | None:
    """Grayscale SSIM of ``answer`` (downscaled to the original's size) against ``original``; None without skimage."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    reference = np.asarray(original.convert("L"), dtype=np.uint8)
    candidate = answer.convert("L")
    if candidate.size != original.size:
        candidate = candidate.resize(original.size, Image.Resampling.LANCZOS)
    compared = np.asarray(candidate, dtype=np.uint8)
    side = min(reference.shape)
    window = MIN_SSIM_SIDE if side >= MIN_SSIM_SIDE else (side if side % 2 else side - 1)
    if window < 3:
        return 1.0 if np.array_equal(reference, compared) else 0.0
    score = structural_similarity(reference, compared, data_range=255, win_size=window)  # type: ignore[no-untyped-call]
    return float(score)


class NanoBananaUpscalerProvider:
    """REFINE (upscale) with a Gemini image model, retried until the answer stays consistent with the input."""

    provider_type: ClassVar[ProviderType] = ProviderType.NANO_BANANA_UPSCALER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.REFINE})

    def __init__(self, settings: VertexSettings, model: str) -> None:
        self.settings = settings
        self.model = model

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Ask for the upscale, check it, resize it to the wanted size and store it."""
        config = ctx.config if isinstance(ctx.config, NanoBananaUpscalerConfig) else NanoBananaUpscalerConfig()
        inputs = ctx.inputs
        source = inputs.get("base_image_url")
        if not source:
            raise InvalidInputError("REFINE needs base_image_url", loc=("base_image_url",))
        limits = ctx.fetch_limits or FetchLimits()
        payload = image_payload(ctx, str(source), "base_image_url")
        original = open_image(payload.data, limits=limits, loc=("task_data", "base_image_url"))
        size = wanted_size(inputs, original.width, original.height)
        if size[0] * size[1] > limits.max_pixels:
            raise InvalidInputError(
                f"the wanted output {size[0]}x{size[1]} exceeds {limits.max_pixels} pixels", loc=("upscale_factor",)
            )
        threshold = config.ssim_threshold
        if threshold > 0 and importlib.util.find_spec("skimage") is None:
            raise ProviderFatalError(
                "nano-banana: the SSIM consistency check needs scikit-image (pip install 'atelier[ml]')",
                category=ErrorCategory.PROVIDER_NOT_AVAILABLE,
            )
        gemini = GeminiClient(ctx, self.settings)
        prompt = inputs.get("upscale_prompt") or config.default_prompt or DEFAULT_PROMPT
        seed = inputs.get("upscale_seed")
        calls = 1 + config.max_retries if threshold > 0 else 1
        best: float | None = None
        response_id: str | None = None
        accepted: tuple[Payload, Image.Image, float | None] | None = None
        attempts = 0
        ctx.progress(5.0)
        for attempts in range(1, calls + 1):
            body = request_body(
                prompt=str(prompt),
                images=[payload],
                system_instruction=SYSTEM_INSTRUCTION,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                model=self.model,
                aspect_ratio=nearest_aspect_ratio(original.width, original.height),
                image_size=image_size_for(size),
                seed=None if seed is None else int(seed) + attempts - 1,
            )
            answer = gemini.generate(self.model, body)
            result = answer_image(answer)
            try:
                image = open_image(result.data, limits=limits, loc=("result",))
            except InvalidInputError as exc:  # the service's output is broken, not the user's input
                raise ProviderFatalError(f"{SERVICE}: the model returned an unusable image: {exc}") from exc
            score = consistency_score(original, image)
            ctx.progress(5.0 + 85.0 * attempts / calls)
            if threshold <= 0 or (score is not None and score >= threshold):
                accepted = (result, image, score)
                rid = answer.get("responseId")
                response_id = rid if isinstance(rid, str) and rid else None
                break
            best = score if best is None or (score is not None and score > best) else best
        if accepted is None:
            raise ProviderFatalError(
                f"nano-banana: consistency check failed: best SSIM {best or 0.0:.4f} is below the threshold "
                f"{threshold:.4f} after {attempts} attempt{'s' if attempts != 1 else ''}"
            )
        result, image, score = accepted
        data = result.data
        if image.size != size:
            resized = image.resize(size, Image.Resampling.LANCZOS)
            data, _ext, _mime = encode_image(resized, "JPEG" if result.mime == "image/jpeg" else "PNG")
        path, _ = store_result_image(ctx, data)
        ctx.progress(100.0)
        outputs: dict[str, Any] = {
            "result_image_path": path,
            "final_ssim_score": None if score is None or math.isnan(score) else round(score, 4),
            "attempts_used": attempts,
        }
        return ProviderResult(outputs=outputs, service_task_id=response_id)


def providers(settings: ProviderSettings) -> list[Any]:
    """The Nano Banana upscaler, on ``settings.vertex`` with ``settings.nano_banana_model``."""
    return [NanoBananaUpscalerProvider(settings.vertex, settings.nano_banana_model)]
