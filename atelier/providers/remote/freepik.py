"""Freepik's Magnific upscalers: FREEPIK_MAGNIFIC (creative) and FREEPIK_MAGNIFIC_PRECISION.

Protocol (Freepik's public API, https://docs.freepik.com/api-reference/image-upscaler-creative and
https://docs.freepik.com/api-reference/image-upscaler-precision):

- Auth: ``x-freepik-api-key: <key>`` on every call (401 ``{"message"}`` when it is wrong).
- Creative submit: ``POST {base}/v1/ai/image-upscaler`` with JSON ``{"image": <bare base64, no data: prefix>,
  "scale_factor": "2x"|"4x"|"8x"|"16x", "optimized_for": "standard"|"soft_portraits"|…, "prompt"?,
  "creativity", "hdr", "resemblance", "fractality" (integers -10..10), "engine": "automatic"|
  "magnific_illusio"|"magnific_sharpy"|"magnific_sparkle", "webhook_url"?}``. The upscaled image may not
  exceed 25.3 million pixels.
- Precision submit: ``POST {base}/v1/ai/image-upscaler-precision`` with ``{"image", "sharpen", "smart_grain",
  "ultra_detail" (integers 0..100), "webhook_url"?}``. This (v1) endpoint takes neither a scale factor nor a
  prompt: the service picks the output size and we resize it locally to the exact size asked for.
- Both submits answer ``200 {"data": {"task_id", "status": "CREATED"|"IN_PROGRESS", "generated": []}}``
  (some pages of the docs show the same fields unwrapped, with ``task_status``; both are accepted).
- Status: ``GET {base}/v1/ai/image-upscaler[-precision]/{task_id}`` → ``{"data": {"task_id", "status":
  "CREATED"|"IN_PROGRESS"|"COMPLETED"|"FAILED", "generated": ["<url>", …]}}``. The ``generated`` URLs expire:
  the result is downloaded at once into the task's folder.
- Errors: 400 ``{"message", "invalid_params": [{"field", "reason"}]}`` (bad input: never retried), 401/403
  (credentials), 429 (rate limit, ``Retry-After``), 5xx. A 404 on the status URL means the task is unknown.
- There is no cancel endpoint: a cancelled task stops polling and the remote job runs to its end.
- We never send ``webhook_url``: polling works behind firewalls and survives worker restarts.

Freepik documents no content-policy outcome for the upscalers; a FAILED status whose body still carries a
message naming moderation/NSFW/safety is reported as ``CONTENT_REJECTED``, any other FAILED job is resubmitted
by the next attempt.

Size mapping (REFINE): ``upscale_factor`` 2/4/8/16 is sent as is; any other factor asks for the smallest
supported factor above it and the result is resized (Lanczos) to ``round(input × factor)``. Without a factor,
``target_width``/``target_height`` (one of them keeps the aspect ratio) pick the smallest factor reaching the
target and the result is resized to the exact target; with neither, Magnific's default 2x is used. The task
id is saved right after submit (``service_task_id``), so a resumed task polls it instead of paying twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits, open_image, probe_image
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult, TaskCancelledError
from atelier.providers.configs import FreepikMagnificConfig, FreepikMagnificPrecisionConfig
from atelier.providers.local.provider import store_image
from atelier.providers.remote.client import RemoteInputError, RemoteJobFailedError, ServiceClient
from atelier.providers.remote.media import Payload, image_payload, store_result_image
from atelier.settings import ProviderSettings, RemoteServiceSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

log = logging.getLogger(__name__)

CREATIVE_PATH = "v1/ai/image-upscaler"
PRECISION_PATH = "v1/ai/image-upscaler-precision"
# Scale factors Magnific's creative upscaler accepts.
CREATIVE_FACTORS = (2, 4, 8, 16)
DEFAULT_FACTOR = 2
MAX_FACTOR = 16
# "The resulted image can't exceed maximum allowed size of 25.3 million pixels" (creative upscaler).
CREATIVE_MAX_OUTPUT_PIXELS = 25_300_000
CONTENT_POLICY_MARKERS = ("nsfw", "content policy", "content_policy", "moderation", "safety", "inappropriate")
_EPSILON = 1e-9
_FIELD = "base_image_url"


@dataclass(frozen=True)
class UpscalePlan:
    """What to ask the service for and the exact size the stored result must have."""

    factor: int  # the scale factor the creative upscaler is asked for
    size: tuple[int, int]  # (width, height) of the stored result


def require_upscale(inputs: dict[str, Any]) -> None:
    """An upscaler cannot run a REFINE that asks for no upscale."""
    if inputs.get("upscale_enabled") is False:
        raise InvalidInputError(
            "Magnific is an upscaler: upscale_enabled=false leaves it nothing to do", loc=("upscale_enabled",)
        )


def plan_upscale(inputs: dict[str, Any], width: int, height: int) -> UpscalePlan:
    """Map the REFINE inputs to a supported scale factor and the exact output size (see the module notes)."""
    require_upscale(inputs)
    factor = inputs.get("upscale_factor")
    target_w = int(inputs.get("target_width") or 0)
    target_h = int(inputs.get("target_height") or 0)
    if factor is None and (target_w or target_h):  # the target decides; one side alone keeps the aspect ratio
        size = (
            target_w or max(1, round(width * target_h / height)),
            target_h or max(1, round(height * target_w / width)),
        )
        needed = max(size[0] / width, size[1] / height)
    else:
        needed = DEFAULT_FACTOR if factor is None else float(factor)
        size = (max(1, round(width * needed)), max(1, round(height * needed)))
    chosen = next((f for f in CREATIVE_FACTORS if f + _EPSILON >= needed), None)
    if chosen is None or chosen > MAX_FACTOR:
        raise InvalidInputError(
            f"a {width}x{height} image needs a {needed:g}x upscale to reach {size[0]}x{size[1]}; "
            f"Magnific upscales at most {MAX_FACTOR}x",
            loc=("upscale_factor",) if factor is not None else ("target_width",),
        )
    return UpscalePlan(chosen, size)


class MagnificJob:
    """One task's conversation with one of Freepik's upscaler endpoints."""

    def __init__(self, ctx: ProviderContext, settings: RemoteServiceSettings, path: str) -> None:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        headers = {"x-freepik-api-key": key} if key else {}
        self.client = ServiceClient(ctx, settings, service="freepik", headers=headers)
        self.ctx = ctx
        self.path = path

    def submit(self, body: dict[str, Any]) -> str:
        """Start a job and save its id at once; returns the task id."""
        response = self.client.request("POST", self.path, json_body=body, ok_statuses=frozenset({400, 422}))
        answer = self.client.decode(response)
        if not response.is_success:
            raise self._rejected(response.status_code, answer)
        data = _data(answer)
        task_id = data.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderFatalError("freepik: submit answer has no task_id")
        self.ctx.save_remote_id(task_id, None)
        return task_id

    def wait(self, task_id: str) -> str:
        """Poll until the job is COMPLETED; returns the URL of the upscaled image."""
        self.ctx.progress(5.0)
        try:
            return self.client.poll(lambda: self._status(task_id), what=f"upscale {task_id}")
        except TaskCancelledError:
            # Freepik has no cancel endpoint: stop polling, the remote job finishes on its own.
            log.info("freepik: task %s cancelled; remote job %s is left to finish", self.ctx.task_id, task_id)
            raise

    def _status(self, task_id: str) -> str | None:
        response = self.client.request("GET", f"{self.path}/{task_id}", ok_statuses=frozenset({404}))
        if response.status_code == 404:  # unknown or expired task: a new attempt submits again
            raise RemoteJobFailedError(f"freepik: task {task_id} is unknown to the service")
        data = _data(self.client.decode(response))
        status = data.get("status") or data.get("task_status")
        if status == "COMPLETED":
            generated = data.get("generated")
            url = generated[0] if isinstance(generated, list) and generated else None
            if not isinstance(url, str) or not url:
                raise RemoteJobFailedError(f"freepik: task {task_id} completed without an image")
            return url
        if status == "FAILED":
            raise self._failure(task_id, data)
        if status == "IN_PROGRESS":
            self.ctx.progress(50.0)
        elif status != "CREATED":
            raise ProviderFatalError(f"freepik: unexpected status {status!r} for task {task_id}")
        return None

    def _failure(self, task_id: str, data: dict[str, Any]) -> Exception:
        detail = " ".join(str(data[key]) for key in ("error", "message", "reason", "detail") if data.get(key))
        text = f": {detail[:300]}" if detail else ""
        if any(marker in detail.lower() for marker in CONTENT_POLICY_MARKERS):
            return ProviderFatalError(
                f"freepik: task {task_id} rejected{text}", category=ErrorCategory.CONTENT_REJECTED
            )
        return RemoteJobFailedError(f"freepik: task {task_id} failed{text}")

    def _rejected(self, status: int, answer: Any) -> Exception:
        message = str(answer.get("message") or "invalid request") if isinstance(answer, dict) else "invalid request"
        params = answer.get("invalid_params") if isinstance(answer, dict) else None
        reasons = [
            f"{item.get('field') or item.get('name')}: {item.get('reason')}"
            for item in params or []
            if isinstance(item, dict)
        ]
        text = f"freepik: POST {self.path} returned HTTP {status}: {message}"
        if reasons:
            text += f" ({'; '.join(reasons)})"
        return RemoteInputError(text[:500], details={"service": "freepik", "status": status})


def _data(body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        inner: dict[str, Any] = body["data"]
        return inner
    if isinstance(body, dict):
        return body
    raise ProviderFatalError("freepik: answer is not a JSON object")


class _MagnificProvider:
    """Shared run logic: plan the size, submit (or resume), poll, download, resize to the exact size."""

    provider_type: ClassVar[ProviderType]
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.REFINE})
    path: ClassVar[str]

    def __init__(self, settings: RemoteServiceSettings) -> None:
        self.settings = settings

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Upscale ``base_image_url``; the stored result has exactly the planned size."""
        source = ctx.inputs.get(_FIELD)
        if not source:
            raise InvalidInputError("REFINE needs base_image_url", loc=(_FIELD,))
        require_upscale(ctx.inputs)  # before reading the input
        payload = image_payload(ctx, str(source), _FIELD)
        _fmt, width, height = probe_image(payload.data, limits=_limits(ctx), loc=("task_data", _FIELD))
        plan = plan_upscale(ctx.inputs, width, height)
        self.check(ctx, plan, width, height)
        job = MagnificJob(ctx, self.settings, self.path)
        task_id = ctx.remote_id or job.submit(self.body(ctx, payload, plan))
        url = job.wait(task_id)
        download = job.client.download(url)
        ctx.progress(90.0)
        path = store_exact(ctx, download.data, plan.size)
        ctx.progress(100.0)
        return ProviderResult(outputs={"result_image_path": path}, service_task_id=task_id)

    def check(self, ctx: ProviderContext, plan: UpscalePlan, width: int, height: int) -> None:
        """Refuse sizes nobody can deliver before paying for a job."""
        limit = _limits(ctx).max_pixels
        if plan.size[0] * plan.size[1] > limit:
            raise InvalidInputError(
                f"the upscaled image would be {plan.size[0]}x{plan.size[1]}, over the {limit} pixel limit",
                loc=("upscale_factor",),
            )

    def body(self, ctx: ProviderContext, payload: Payload, plan: UpscalePlan) -> dict[str, Any]:
        """The submit's JSON body."""
        raise NotImplementedError


class FreepikMagnificProvider(_MagnificProvider):
    """REFINE on Magnific's creative upscaler (prompt-guided, 2x–16x)."""

    provider_type: ClassVar[ProviderType] = ProviderType.FREEPIK_MAGNIFIC
    path: ClassVar[str] = CREATIVE_PATH

    def check(self, ctx: ProviderContext, plan: UpscalePlan, width: int, height: int) -> None:
        """Also refuse what Magnific itself refuses: an output over 25.3 million pixels."""
        super().check(ctx, plan, width, height)
        pixels = width * height * plan.factor**2
        if pixels > CREATIVE_MAX_OUTPUT_PIXELS:
            raise InvalidInputError(
                f"a {plan.factor}x upscale of a {width}x{height} image is {pixels} pixels; Magnific's limit is "
                f"{CREATIVE_MAX_OUTPUT_PIXELS}",
                loc=("upscale_factor",),
            )

    def body(self, ctx: ProviderContext, payload: Payload, plan: UpscalePlan) -> dict[str, Any]:
        """Creative upscaler input: image, scale factor, the config's knobs and the prompt."""
        config = ctx.config
        assert isinstance(config, FreepikMagnificConfig)
        body: dict[str, Any] = {
            "image": payload.base64,
            "scale_factor": f"{plan.factor}x",
            "optimized_for": config.optimized_for,
            "creativity": config.creativity,
            "hdr": config.hdr,
            "resemblance": config.resemblance,
            "fractality": config.fractality,
            "engine": config.engine,
        }
        prompt = ctx.inputs.get("upscale_prompt") or config.defaultPrompt
        if prompt:
            body["prompt"] = prompt
        return body


class FreepikMagnificPrecisionProvider(_MagnificProvider):
    """REFINE on Magnific's precision upscaler (faithful, no prompt; the size is finished locally)."""

    provider_type: ClassVar[ProviderType] = ProviderType.FREEPIK_MAGNIFIC_PRECISION
    path: ClassVar[str] = PRECISION_PATH

    def body(self, ctx: ProviderContext, payload: Payload, plan: UpscalePlan) -> dict[str, Any]:
        """Precision upscaler input: image and the three detail knobs (v1 takes no factor and no prompt)."""
        config = ctx.config
        assert isinstance(config, FreepikMagnificPrecisionConfig)
        return {
            "image": payload.base64,
            "sharpen": config.sharpen,
            "smart_grain": config.smart_grain,
            "ultra_detail": config.ultra_detail,
        }


def store_exact(ctx: ProviderContext, data: bytes, size: tuple[int, int]) -> str:
    """Save the downloaded image as it is when it has ``size``, else resized to it with Lanczos."""
    limits = _limits(ctx)
    try:
        fmt, width, height = probe_image(data, limits=limits, loc=("result",))
        if (width, height) == size:
            return store_result_image(ctx, data)[0]
        image = open_image(data, limits=limits, loc=("result",))
    except InvalidInputError as exc:  # the service's output is broken, not the user's input
        raise ProviderFatalError(f"freepik returned an unusable image: {exc}") from exc
    if image.size == size:  # only the EXIF orientation differed
        return store_image(ctx, image, fmt)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return store_image(ctx, image.resize(size, Image.Resampling.LANCZOS), fmt)


def _limits(ctx: ProviderContext) -> FetchLimits:
    return ctx.fetch_limits or FetchLimits()


def providers(settings: ProviderSettings) -> list[Any]:
    """The Freepik Magnific providers, connected with ``settings.freepik``."""
    return [FreepikMagnificProvider(settings.freepik), FreepikMagnificPrecisionProvider(settings.freepik)]
