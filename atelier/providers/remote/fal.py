"""fal.ai queue providers: FAL_STANDARD, FAL_SHOOTIFY_REFINER and FAL_GARMENT_FIXER.

Protocol (fal's public queue API, https://docs.fal.ai/model-endpoints/queue):

- Auth: ``Authorization: Key <FAL_KEY>`` on every call.
- Submit: ``POST {base}/{app_id}`` with the app's input as JSON → ``200 {"request_id", "status_url",
  "response_url", "cancel_url", "queue_position"}``.
- Status: ``GET {base}/{owner}/{alias}/requests/{request_id}/status?logs=1`` → ``{"status": "IN_QUEUE",
  "queue_position": n}`` | ``{"status": "IN_PROGRESS", "logs": […]}`` | ``{"status": "COMPLETED", "logs",
  "response_url", "error"?, "error_type"?}`` (202 while queued/running, 200 when completed). Status and
  result URLs use the app's first two path segments only (``fal-ai/flux/dev`` → ``fal-ai/flux``).
- Result: ``GET {base}/{owner}/{alias}/requests/{request_id}`` → the app's output JSON (e.g. ``{"images":
  [{"url", "content_type", "width", "height"}], "seed"}`` or ``{"video": {"url"}}``); a failed request answers
  4xx/5xx here with ``{"detail": …}``.
- Cancel: ``PUT {base}/{owner}/{alias}/requests/{request_id}/cancel`` → 202 ``CANCELLATION_REQUESTED`` or
  400 ``ALREADY_COMPLETED``.

The request id is saved (``service_task_id`` and the config's ``fal_request_id``) right after submit, so a
task resumed after its worker died polls the same request instead of paying for a second one.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from atelier.core.errors import InvalidInputError
from atelier.providers.base import (
    ProviderContext,
    ProviderFatalError,
    ProviderResult,
    TaskCancelledError,
)
from atelier.providers.remote.client import RemoteJobFailedError, ServiceClient
from atelier.providers.remote.media import image_payload, store_result_image, store_result_video
from atelier.settings import ProviderSettings, RemoteServiceSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

log = logging.getLogger(__name__)

# The app a task runs when neither the task nor the provider config names one.
DEFAULT_APPS: dict[tuple[ProviderType, TaskType], str] = {
    (ProviderType.FAL_STANDARD, TaskType.GENERATION): "fal-ai/flux/dev",
    (ProviderType.FAL_STANDARD, TaskType.EDITING): "fal-ai/flux-pro/kontext",
    (ProviderType.FAL_STANDARD, TaskType.REFINE): "fal-ai/clarity-upscaler",
    (ProviderType.FAL_STANDARD, TaskType.VIDEO_GENERATION): "fal-ai/kling-video/v2.1/standard/image-to-video",
    (ProviderType.FAL_SHOOTIFY_REFINER, TaskType.REFINE): "fal-ai/clarity-upscaler",
    (ProviderType.FAL_GARMENT_FIXER, TaskType.EDITING): "fal-ai/fashn/tryon/v1.6",
}
TEXT_TO_VIDEO_APP = "fal-ai/kling-video/v2.1/standard/text-to-video"
CONTENT_POLICY_MARKERS = ("content_policy", "nsfw", "safety")


def app_root(app_id: str) -> str:
    """The ``owner/alias`` part of an app id, which fal's status/result/cancel URLs use."""
    parts = [part for part in app_id.strip("/").split("/") if part]
    if len(parts) < 2:
        raise InvalidInputError(f"fal_app_id {app_id!r} must look like 'owner/app'", loc=("fal_app_id",))
    return "/".join(parts[:2])


class FalQueue:
    """One task's conversation with fal's queue."""

    def __init__(self, ctx: ProviderContext, settings: RemoteServiceSettings) -> None:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        headers = {"Authorization": f"Key {key}"} if key else {}
        self.client = ServiceClient(ctx, settings, service="fal", headers=headers)
        self.ctx = ctx

    def run(self, app_id: str, arguments: dict[str, Any], request_id: str | None) -> tuple[str, dict[str, Any]]:
        """Submit (unless resuming ``request_id``), wait, fetch the output; returns (request_id, output)."""
        root = app_root(app_id)
        if request_id is None:
            submitted = self.client.post_json(app_id, arguments)
            request_id = submitted.get("request_id") if isinstance(submitted, dict) else None
            if not isinstance(request_id, str) or not request_id:
                raise ProviderFatalError("fal: submit answer has no request_id")
            self.ctx.save_remote_id(request_id, "fal_request_id")
        self.ctx.progress(5.0)
        try:
            self.client.poll(lambda: self._status(root, request_id), what=f"request {request_id}")
        except TaskCancelledError:
            self.cancel(root, request_id)
            raise
        response = self.client.request("GET", f"{root}/requests/{request_id}", ok_statuses=frozenset({422}))
        output = self.client.decode(response)
        if response.status_code == 422 or not isinstance(output, dict):
            raise self._failure(request_id, output)
        self.ctx.progress(90.0)
        return request_id, output

    def _status(self, root: str, request_id: str) -> bool | None:
        response = self.client.request(
            "GET", f"{root}/requests/{request_id}/status", params={"logs": "1"}, ok_statuses=frozenset({404})
        )
        if response.status_code == 404:  # unknown/expired request: a new attempt submits again
            raise RemoteJobFailedError(f"fal: request {request_id} is unknown to the queue")
        body = self.client.decode(response)
        status = body.get("status") if isinstance(body, dict) else None
        if status == "COMPLETED":
            if body.get("error"):
                raise self._failure(request_id, body)
            return True
        if status == "IN_PROGRESS":
            self.ctx.progress(50.0)
        elif status != "IN_QUEUE":
            raise ProviderFatalError(f"fal: unexpected status {status!r} for request {request_id}")
        return None

    def _failure(self, request_id: str, body: Any) -> Exception:
        detail = body.get("error") or body.get("detail") if isinstance(body, dict) else body
        text = str(detail)[:300]
        error_type = str(body.get("error_type", "")) if isinstance(body, dict) else ""
        if any(marker in (text + error_type).lower() for marker in CONTENT_POLICY_MARKERS):
            return ProviderFatalError(
                f"fal: request {request_id} rejected: {text}", category=ErrorCategory.CONTENT_REJECTED
            )
        if isinstance(body, dict) and isinstance(body.get("detail"), list):  # the app's input validation
            return InvalidInputError(f"fal rejected the input of request {request_id}: {text}")
        return RemoteJobFailedError(f"fal: request {request_id} failed: {text}")

    def cancel(self, root: str, request_id: str) -> None:
        """Ask fal to cancel (best effort: the task is cancelled whatever fal answers)."""
        try:
            self.client.request(
                "PUT", f"{root}/requests/{request_id}/cancel", ok_statuses=frozenset({400, 404}), cancellable=False
            )
        except Exception as exc:  # a failed cancel must not turn a cancellation into a failure
            log.warning("fal: cancel of request %s failed: %s", request_id, exc)


def first_media_url(output: dict[str, Any], key: str) -> str | None:
    """``output[key]`` as a URL, whether fal gives a list of files, one file or a bare string."""
    value = output.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) and value else None


class _FalProvider:
    """Shared run logic; subclasses say which tasks they serve and how to build the app's input."""

    provider_type: ClassVar[ProviderType]
    task_types: ClassVar[frozenset[TaskType]]

    def __init__(self, settings: RemoteServiceSettings) -> None:
        self.settings = settings

    def app_id(self, ctx: ProviderContext) -> str:
        """Task field, then provider config, then the default app for this task type."""
        config_app = getattr(ctx.config, "fal_app_id", None)
        app = ctx.inputs.get("fal_app_id") or config_app or DEFAULT_APPS.get((self.provider_type, ctx.task_type))
        if (
            ctx.task_type == TaskType.VIDEO_GENERATION
            and not ctx.inputs.get("input_image_path")
            and not (ctx.inputs.get("fal_app_id") or config_app)
        ):
            app = TEXT_TO_VIDEO_APP
        if not app:
            raise InvalidInputError("fal_app_id is required", loc=("fal_app_id",))
        return str(app)

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Build the input, run it on fal's queue, download the result into storage."""
        app = self.app_id(ctx)
        resume = ctx.remote_id or getattr(ctx.config, "fal_request_id", None)
        arguments = {} if resume else self.arguments(ctx)
        queue = FalQueue(ctx, self.settings)
        request_id, output = queue.run(app, arguments, resume)
        outputs = self.store(ctx, queue.client, output)
        outputs["fal_request_id"] = request_id
        outputs["fal_app_id"] = app
        ctx.progress(100.0)
        return ProviderResult(outputs=outputs, service_task_id=request_id)

    def arguments(self, ctx: ProviderContext) -> dict[str, Any]:
        """The app's JSON input for this task."""
        inputs = ctx.inputs
        args: dict[str, Any]
        if ctx.task_type == TaskType.EXPERIMENTAL_FAL:
            args = dict(inputs.get("fal_parameters") or {})
        elif ctx.task_type == TaskType.GENERATION:
            args = {"prompt": inputs["prompt"], "num_images": 1}
            _size(args, inputs.get("width"), inputs.get("height"))
            if inputs.get("reference_image_path"):
                args["image_url"] = image_payload(ctx, inputs["reference_image_path"], "reference_image_path").data_uri
                if inputs.get("reference_image_strength") is not None:
                    # The spec's value is the reference's influence (0-100); fal's `strength` is how much of it the
                    # denoiser may change (1.0 = ignore it), so more influence is less strength (as LOCAL does).
                    args["strength"] = 1.0 - float(inputs["reference_image_strength"]) / 100.0
            loras = _loras(inputs)
            if loras:
                args["loras"] = loras
        elif ctx.task_type == TaskType.EDITING:
            args = self.editing_arguments(ctx)
        elif ctx.task_type == TaskType.REFINE:
            args = _refine_arguments(ctx)
        elif ctx.task_type == TaskType.VIDEO_GENERATION:
            args = {"prompt": inputs["prompt"], "duration": str(inputs.get("duration_seconds") or 5)}
            args["cfg_scale"] = inputs.get("cfg_scale", 0.5)
            if inputs.get("negative_prompt"):
                args["negative_prompt"] = inputs["negative_prompt"]
            if inputs.get("input_image_path"):
                args["image_url"] = image_payload(ctx, inputs["input_image_path"], "input_image_path").data_uri
        else:  # pragma: no cover - the registry only routes declared task types here
            raise ProviderFatalError(f"fal cannot run {ctx.task_type.value} tasks")
        if ctx.task_type in (TaskType.GENERATION, TaskType.EDITING) and inputs.get("seed") is not None:
            args["seed"] = inputs["seed"]
        static = getattr(ctx.config, "additional_static_params", None)
        if static:
            args.update(static)
        return args

    def editing_arguments(self, ctx: ProviderContext) -> dict[str, Any]:
        """Prompt-driven edit of the base image, with reference images when given."""
        inputs = ctx.inputs
        base = inputs.get("base_image_path")
        if not base:
            raise InvalidInputError("EDITING on fal needs base_image", loc=("base_image",))
        args: dict[str, Any] = {
            "prompt": inputs["prompt"],
            "image_url": image_payload(ctx, base, "base_image").data_uri,
        }
        references = [*(inputs.get("reference_images") or [])]
        if inputs.get("reference_image_path"):
            references.append(inputs["reference_image_path"])
        if references:
            args["image_urls"] = [args["image_url"]] + [
                image_payload(ctx, ref, "reference_images").data_uri for ref in references
            ]
        _size(args, inputs.get("width"), inputs.get("height"))
        return args

    def store(self, ctx: ProviderContext, client: ServiceClient, output: dict[str, Any]) -> dict[str, Any]:
        """Download the output file(s) into the task's folder; the task never keeps fal's URLs."""
        if ctx.task_type == TaskType.VIDEO_GENERATION:
            url = first_media_url(output, "video")
            if url is None:
                raise ProviderFatalError("fal: the output has no video")
            download = client.download(url)
            return {"result_video_path": store_result_video(ctx, download.data, download.content_type, url)}
        url = first_media_url(output, "images") or first_media_url(output, "image")
        if ctx.task_type == TaskType.EXPERIMENTAL_FAL:
            url = url or first_media_url(output, "video")
            if url is None:  # a non-media app: its JSON output is the result
                return {"fal_output": output}
            download = client.download(url)
            if (download.content_type or "").startswith("video/"):
                path = store_result_video(ctx, download.data, download.content_type, url)
            else:
                path, _ = store_result_image(ctx, download.data)
            return {"result_url": path}
        if url is None:
            raise ProviderFatalError("fal: the output has no image")
        path, _ = store_result_image(ctx, client.download(url).data)
        outputs: dict[str, Any] = {"result_image_path": path}
        if ctx.task_type == TaskType.GENERATION and isinstance(output.get("seed"), int):
            outputs["seed"] = output["seed"]
        return outputs


def _size(args: dict[str, Any], width: Any, height: Any) -> None:
    if width and height:
        args["image_size"] = {"width": int(width), "height": int(height)}


def _loras(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    loras = []
    for kind in ("subject", "product", "style"):
        path = inputs.get(f"{kind}_model_path")
        if not path:
            continue
        if not str(path).startswith(("http://", "https://")):
            raise InvalidInputError(
                f"fal loads LoRAs by URL; {kind}_model_path {path!r} is not one", loc=(f"{kind}_model_path",)
            )
        weight = inputs.get(f"{kind}_lora_weight")
        loras.append({"path": path, "scale": 1.0 if weight is None else float(weight)})
    return loras


def _refine_arguments(ctx: ProviderContext) -> dict[str, Any]:
    inputs = ctx.inputs
    args: dict[str, Any] = {
        "image_url": image_payload(ctx, inputs["base_image_url"], "base_image_url").data_uri,
        "num_inference_steps": inputs.get("upscale_steps", 20),
        "creativity": inputs.get("upscale_denoise", 0.3),
    }
    if inputs.get("upscale_prompt"):
        args["prompt"] = inputs["upscale_prompt"]
    if inputs.get("upscale_seed") is not None:
        args["seed"] = inputs["upscale_seed"]
    if inputs.get("upscale_enabled", True):
        args["upscale_factor"] = inputs.get("upscale_factor") or 2
    else:
        args["upscale_factor"] = 1
    return args


class FalStandardProvider(_FalProvider):
    """Any fal app: generation, editing, refine, video and EXPERIMENTAL_FAL's free-form parameters."""

    provider_type: ClassVar[ProviderType] = ProviderType.FAL_STANDARD
    task_types: ClassVar[frozenset[TaskType]] = frozenset(
        {TaskType.GENERATION, TaskType.EDITING, TaskType.REFINE, TaskType.VIDEO_GENERATION, TaskType.EXPERIMENTAL_FAL}
    )


class FalShootifyRefinerProvider(_FalProvider):
    """REFINE on a fal refiner/upscaler app."""

    provider_type: ClassVar[ProviderType] = ProviderType.FAL_SHOOTIFY_REFINER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.REFINE})


class FalGarmentFixerProvider(_FalProvider):
    """EDITING as a try-on: the base image is the model, the first reference image the garment."""

    provider_type: ClassVar[ProviderType] = ProviderType.FAL_GARMENT_FIXER
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.EDITING})

    def editing_arguments(self, ctx: ProviderContext) -> dict[str, Any]:
        """fal's try-on input: ``model_image`` + ``garment_image``."""
        inputs = ctx.inputs
        base = inputs.get("base_image_path")
        garments = [*(inputs.get("reference_images") or []), *filter(None, [inputs.get("reference_image_path")])]
        if not base or not garments:
            raise InvalidInputError("the garment fixer needs base_image and a garment in reference_images")
        return {
            "model_image": image_payload(ctx, base, "base_image").data_uri,
            "garment_image": image_payload(ctx, garments[0], "reference_images").data_uri,
            "category": "auto",
        }


def providers(settings: ProviderSettings) -> list[Any]:
    """The fal providers, connected with ``settings.fal``."""
    return [
        FalStandardProvider(settings.fal),
        FalShootifyRefinerProvider(settings.fal),
        FalGarmentFixerProvider(settings.fal),
    ]
