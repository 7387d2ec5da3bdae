"""FASHN virtual try-on: FASHN_STANDARD runs EDITING tasks as a try-on on FASHN's API v1.

Protocol (FASHN's public API, https://docs.fashn.ai/api-overview/api-fundamentals and
https://docs.fashn.ai/api-overview/error-handling):

- Auth: ``Authorization: Bearer <FASHN_API_KEY>`` on every call.
- Submit: ``POST {base}/v1/run`` with ``{"model_name": "tryon-v1.6", "inputs": {"model_image", "garment_image",
  "category": "auto", "seed"?}}`` (seed: 0 to 2**32-1); images may be URLs or base64 data URLs
  (``data:image/png;base64,…``), we always send data URLs. Answer: ``200 {"id": "<prediction id>", "error": null}``.
- Status: ``GET {base}/v1/status/{id}`` → ``200 {"id", "status", "output", "error"}`` where ``status`` is one of
  ``starting | in_queue | processing | completed | failed | canceled | time_out``, ``output`` is a list of CDN
  image URLs (or data URLs when ``return_base64`` was asked, which we do not) once completed, and ``error`` is
  ``null`` or ``{"name", "message"}`` when failed. A prediction that is no longer tracked answers 404.
- Runtime error names (``error.name`` of a failed prediction): ``ContentModerationError`` / ``NSFWError``
  (moderation: content rejected), ``ImageLoadError``, ``PoseError``, ``PhotoTypeError``,
  ``InputValidationError`` (the inputs are unusable: invalid input, never retried), ``PipelineError``,
  ``ThirdPartyError``, ``3rdPartyProviderError``, ``InternalServerError`` and anything else (the job failed:
  the next attempt submits a new one).
- API-level errors answer an HTTP status with ``{"error": "<Name>", "message": "…"}``: 400 ``BadRequest``,
  401 ``UnauthorizedAccess``, 404 ``NotFound``, 429 ``RateLimitExceeded`` / ``ConcurrencyLimitExceeded`` /
  ``OutOfCredits``, 500 ``InternalServerError`` (classified by ``ServiceClient``).
- Cancel: ``POST {base}/v1/cancel/{id}``, best effort (it is not in FASHN's published SDK; whatever it answers,
  the task is cancelled).

The prediction id is saved (``service_task_id`` and the config's ``fashn_task_id``) right after submit, so a
task resumed after its worker died polls the same prediction instead of paying for a second one. The status is
polled once immediately after submit (a fast try-on finishes without waiting), then every ``poll_interval``
seconds of the provider config, for at most ``max_wait_seconds`` (default: the service's ``max_wait_seconds``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx

from atelier.core.errors import InvalidInputError
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult, TaskCancelledError
from atelier.providers.remote.client import RemoteInputError, RemoteJobFailedError, ServiceClient
from atelier.providers.remote.media import decode_data_uri, image_payload, store_result_image
from atelier.settings import ProviderSettings, RemoteServiceSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

log = logging.getLogger(__name__)

MODEL_NAME = "tryon-v1.6"
CATEGORY = "auto"
PENDING_STATUSES = frozenset({"starting", "in_queue"})
CONTENT_ERRORS = frozenset({"ContentModerationError", "NSFWError"})
INPUT_ERRORS = frozenset({"ImageLoadError", "PoseError", "PhotoTypeError", "InputValidationError"})
SEED_RANGE = 2**32
# Submit answers reporting a bad request; other statuses are classified by ServiceClient.
INPUT_STATUSES = frozenset({400, 404, 413, 422})
_MESSAGE_CHARS = 300


def api_error(response: httpx.Response) -> str:
    """``<error>: <message>`` of an API-level error body (``{"error": "BadRequest", "message": "…"}``)."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:_MESSAGE_CHARS] or "no details"
    if not isinstance(body, dict):
        return str(body)[:_MESSAGE_CHARS]
    parts = [str(body[key]) for key in ("error", "message") if body.get(key)]
    return ": ".join(parts)[:_MESSAGE_CHARS] or "no details"


class FashnPrediction:
    """One task's conversation with FASHN's prediction API."""

    def __init__(self, ctx: ProviderContext, settings: RemoteServiceSettings) -> None:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = ServiceClient(ctx, settings, service="fashn", headers=headers)
        self.ctx = ctx

    def submit(self, inputs: dict[str, Any]) -> str:
        """``POST /v1/run``; returns the prediction id (already saved for a resumed attempt to poll)."""
        response = self.client.request(
            "POST", "v1/run", json_body={"model_name": MODEL_NAME, "inputs": inputs}, ok_statuses=INPUT_STATUSES
        )
        if response.status_code in INPUT_STATUSES:  # keep FASHN's message: it says which input is wrong
            raise RemoteInputError(
                f"fashn: POST /v1/run returned HTTP {response.status_code}: {api_error(response)}",
                details={"service": "fashn", "status": response.status_code},
            )
        answer = self.client.decode(response)
        prediction_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(prediction_id, str) or not prediction_id:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ProviderFatalError(f"fashn: submit answer has no prediction id ({str(error)[:_MESSAGE_CHARS]})")
        self.ctx.save_remote_id(prediction_id, "fashn_task_id")
        return prediction_id

    def wait(self, prediction_id: str, *, interval: float, max_wait: float) -> list[str]:
        """Poll the prediction until it completes; returns its outputs. Cancels it remotely when cancelled."""
        try:
            return self.client.poll(
                lambda: self._status(prediction_id),
                what=f"prediction {prediction_id}",
                interval=interval,
                max_wait=max_wait,
            )
        except TaskCancelledError:
            self.cancel(prediction_id)
            raise

    def _status(self, prediction_id: str) -> list[str] | None:
        response = self.client.request("GET", f"v1/status/{prediction_id}", ok_statuses=frozenset({404}))
        if response.status_code == 404:  # no longer tracked: a new attempt submits again
            raise RemoteJobFailedError(f"fashn: prediction {prediction_id} is unknown to the service")
        body = self.client.decode(response)
        status = body.get("status") if isinstance(body, dict) else None
        if status == "completed":
            output = body.get("output")
            urls = [item for item in output if isinstance(item, str) and item] if isinstance(output, list) else []
            if not urls:
                raise ProviderFatalError(f"fashn: prediction {prediction_id} completed without an output image")
            self.ctx.progress(80.0)
            return urls
        if status == "failed":
            raise self._failure(prediction_id, body.get("error"))
        if status == "canceled":
            raise RemoteJobFailedError(f"fashn: prediction {prediction_id} was canceled by the service")
        if status == "time_out":
            raise RemoteJobFailedError(
                f"fashn: prediction {prediction_id} timed out on the service", category=ErrorCategory.PROVIDER_TIMEOUT
            )
        if status == "processing":
            self.ctx.progress(50.0)
        elif status in PENDING_STATUSES:
            self.ctx.progress(10.0)
        else:
            raise ProviderFatalError(f"fashn: unexpected status {str(status)[:40]!r} for prediction {prediction_id}")
        return None

    def _failure(self, prediction_id: str, error: Any) -> Exception:
        name = str(error.get("name") or "") if isinstance(error, dict) else ""
        message = str(error.get("message") or "") if isinstance(error, dict) else str(error or "")
        text = f"{name}: {message}"[:_MESSAGE_CHARS] if name else message[:_MESSAGE_CHARS]
        if name in CONTENT_ERRORS:
            return ProviderFatalError(
                f"fashn: prediction {prediction_id} rejected: {text}", category=ErrorCategory.CONTENT_REJECTED
            )
        if name in INPUT_ERRORS:
            return InvalidInputError(
                f"fashn could not use the input of prediction {prediction_id}: {text}",
                details={"service": "fashn", "error": name},
            )
        return RemoteJobFailedError(f"fashn: prediction {prediction_id} failed: {text or 'no error given'}")

    def cancel(self, prediction_id: str) -> None:
        """Ask FASHN to cancel (best effort: the task is cancelled whatever FASHN answers)."""
        try:
            self.client.request(
                "POST", f"v1/cancel/{prediction_id}", ok_statuses=frozenset({400, 404, 409}), cancellable=False
            )
        except Exception as exc:  # a failed cancel must not turn a cancellation into a failure
            log.warning("fashn: cancel of prediction %s failed: %s", prediction_id, exc)


class FashnStandardProvider:
    """EDITING as a virtual try-on: the base image is the model photo, the first reference image the garment."""

    provider_type: ClassVar[ProviderType] = ProviderType.FASHN_STANDARD
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.EDITING})

    def __init__(self, settings: RemoteServiceSettings) -> None:
        self.settings = settings

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Submit the try-on (or resume the saved prediction), wait for it, download the result into storage."""
        config = ctx.config
        prediction = FashnPrediction(ctx, self.settings)
        prediction_id = ctx.remote_id or getattr(config, "fashn_task_id", None)
        if not prediction_id:
            prediction_id = prediction.submit(self.inputs(ctx))
        ctx.progress(5.0)
        max_wait = getattr(config, "max_wait_seconds", None) or self.settings.max_wait_seconds
        interval = float(getattr(config, "poll_interval", None) or self.settings.poll_interval_seconds)
        outputs = prediction.wait(prediction_id, interval=interval, max_wait=float(max_wait))
        path, _ = store_result_image(ctx, self.result_bytes(prediction.client, outputs[0]))
        ctx.progress(100.0)
        return ProviderResult(outputs={"result_image_path": path}, service_task_id=prediction_id)

    @staticmethod
    def result_bytes(client: ServiceClient, output: str) -> bytes:
        """The output image: downloaded from FASHN's CDN (the task never keeps the URL), or a data URL decoded."""
        if output.startswith("data:"):  # only with ``return_base64``, which we never ask for
            return decode_data_uri(output).data
        return client.download(output).data

    def inputs(self, ctx: ProviderContext) -> dict[str, Any]:
        """The try-on inputs: model and garment photos as data URLs (downscaled to ``max_image_height``)."""
        task = ctx.inputs
        base = task.get("base_image_path")
        garments = [*(task.get("reference_images") or []), *filter(None, [task.get("reference_image_path")])]
        if not base:
            raise InvalidInputError("a FASHN try-on needs base_image (the model photo)", loc=("base_image",))
        if not garments:
            raise InvalidInputError(
                "a FASHN try-on needs the garment photo in reference_images", loc=("reference_images",)
            )
        max_height = getattr(ctx.config, "max_image_height", None)
        inputs: dict[str, Any] = {
            "model_image": image_payload(ctx, base, "base_image", max_height=max_height).data_uri,
            "garment_image": image_payload(ctx, garments[0], "reference_images", max_height=max_height).data_uri,
            "category": CATEGORY,
        }
        if task.get("seed") is not None:  # FASHN takes 32-bit seeds; ours go to 2**63-1
            inputs["seed"] = int(task["seed"]) % SEED_RANGE
        return inputs


def providers(settings: ProviderSettings) -> list[Any]:
    """The FASHN provider, connected with ``settings.fashn``."""
    return [FashnStandardProvider(settings.fashn)]
