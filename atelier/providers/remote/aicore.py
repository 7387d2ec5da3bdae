"""AiCore: LLM_INTERACTION on a vendor's public chat API (OpenAI, Anthropic, Gemini or Ollama).

``provider_config.ai_provider`` picks the vendor, ``model``/``max_tokens``/``temperature`` shape the call. The
connection (base URL, key, timeouts) comes from ``settings.providers.<vendor>``. Every call is one synchronous
request/answer: there is no remote job id, so nothing is saved for resumption and ``service_task_id`` stays
empty; a task resumed after its worker died simply asks again. Input images (``input_images``: storage paths or
URLs) are always sent inline, in each vendor's own image format; the vendor never fetches anything.

Protocols (the request carries the prompt as a single user turn, the system prompt where each vendor wants it):

- OpenAI (https://platform.openai.com/docs/api-reference/chat): ``POST {base}/v1/chat/completions`` with
  ``Authorization: Bearer <key>``; body ``{"model", "messages": [{"role": "system", "content"}?, {"role":
  "user", "content": [{"type": "text", "text"}, {"type": "image_url", "image_url": {"url": <data URL>}}…]}],
  "temperature", "max_tokens"?}`` (the content is a plain string when there is no image). Reasoning models
  (``o1``/``o3``/``o4…``, ``gpt-5…``) take ``max_completion_tokens`` instead and no ``temperature``. Answer
  ``{"id", "choices": [{"message": {"content", "refusal"?}, "finish_reason": "stop"|"length"|"content_filter"}],
  "usage": {"prompt_tokens", "completion_tokens"}}``; errors ``{"error": {"message", "type", "code"}}`` (a 400
  with code ``content_filter``/``content_policy_violation`` is a content rejection).
- Anthropic (https://docs.anthropic.com/en/api/messages): ``POST {base}/v1/messages`` with ``x-api-key`` and
  ``anthropic-version: 2023-06-01``; body ``{"model", "max_tokens" (required: the config's or 1024), "system"?,
  "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type",
  "data"}}…, {"type": "text", "text"}]}], "temperature"}`` (Anthropic accepts temperature 0–1 only: a higher
  value fails as invalid input before any call). Answer ``{"id", "content": [{"type": "text", "text"}…],
  "stop_reason": "end_turn"|"max_tokens"|"refusal"…, "usage": {"input_tokens", "output_tokens",
  "cache_*_input_tokens"?}}``; errors ``{"type": "error", "error": {"type", "message"}}``; 529 ``overloaded``
  is a 5xx like any other (retried).
- Gemini, Google AI API (https://ai.google.dev/api/generate-content): ``POST
  {base}/v1beta/models/{model}:generateContent`` with the key in the ``x-goog-api-key`` header (never in the
  URL); body ``{"contents": [{"role": "user", "parts": [{"text"}, {"inline_data": {"mime_type", "data"}}…]}],
  "systemInstruction": {"parts": [{"text"}]}?, "generationConfig": {"temperature", "maxOutputTokens"?}}``.
  Answer ``{"candidates": [{"content": {"parts": [{"text", "thought"?}]}, "finishReason": "STOP"|"MAX_TOKENS"|
  "SAFETY"|…}], "promptFeedback": {"blockReason"}?, "usageMetadata": {"promptTokenCount",
  "candidatesTokenCount", "thoughtsTokenCount"?}}``; thought parts are not part of the answer but their tokens
  are counted as output (they are billed as such). Errors ``{"error": {"code", "message", "status",
  "details"}}``; an invalid key answers 400 ``API_KEY_INVALID``, treated as rejected credentials.
- Ollama (https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion): ``POST
  {base}/api/chat``, no auth (``Authorization: Bearer`` when a key is configured, e.g. behind a proxy); body
  ``{"model", "messages": [{"role": "system", "content"}?, {"role": "user", "content", "images": [<base64>…]?}],
  "stream": false, "options": {"temperature", "num_predict"?}}``. Answer ``{"message": {"role": "assistant",
  "content"}, "done": true, "done_reason", "prompt_eval_count", "eval_count"}``; errors ``{"error": "…"}``
  (404: model not pulled → invalid input).

Outcomes: the answer's text, token counts and finish reason go to ``result_text``, ``input_tokens``,
``output_tokens`` and ``finish_reason``. A content-filter stop, refusal or blocked prompt fails with
``CONTENT_REJECTED`` (never retried; the fallback provider may run). An answer without text is a failed job
(retried). HTTP errors are classified by ``ServiceClient``; chat calls are marked idempotent, so 429/5xx/timeouts
are retried within the attempt. A vendor that needs a key and has none fails at once, naming the setting.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from atelier.core.errors import InvalidInputError
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult
from atelier.providers.configs import AiCoreProviderConfig
from atelier.providers.remote.client import RemoteInputError, RemoteJobFailedError, ServiceClient
from atelier.providers.remote.media import Payload, image_payload
from atelier.settings import ProviderSettings, RemoteServiceSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_MAX_TOKENS = 1024
# OpenAI reasoning models: ``max_completion_tokens`` instead of ``max_tokens``, default temperature only.
OPENAI_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(?!.*-chat)", re.IGNORECASE)
# Error codes/types by which OpenAI (and Azure OpenAI) report a prompt rejected by the content policy.
CONTENT_ERROR_CODES = frozenset({"content_filter", "content_policy_violation", "responsibleaipolicyviolation"})
GEMINI_BLOCKED_FINISH = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"})
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Conversation:
    """A vendor-neutral request: one user turn (prompt and images) and an optional system prompt."""

    model: str
    prompt: str
    system_prompt: str | None
    images: list[Payload]
    max_tokens: int | None
    temperature: float


@dataclass(frozen=True)
class Reply:
    """What the model answered."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sum_tokens(*values: Any) -> int | None:
    counts = [v for v in map(_int, values) if v is not None]
    return sum(counts) if counts else None


def _error_fields(body: Any) -> tuple[str, set[str]]:
    """(message, lower-cased codes/types/reasons) of any vendor's error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error, set()
    if not isinstance(error, dict):
        return (str(body) if body else "no details"), set()
    codes = {str(error[k]).lower() for k in ("type", "code", "status") if error.get(k)}
    inner = error.get("innererror")
    if isinstance(inner, dict) and inner.get("code"):
        codes.add(str(inner["code"]).lower())
    for detail in _list(error.get("details")):
        if isinstance(detail, dict) and detail.get("reason"):
            codes.add(str(detail["reason"]).lower())
    return str(error.get("message") or "no details"), codes


def _rejected(text: str, *, service: str) -> ProviderFatalError:
    return ProviderFatalError(f"{service}: {text[:_DETAIL_CHARS]}", category=ErrorCategory.CONTENT_REJECTED)


class _Vendor:
    """One vendor's chat protocol: where to send, what to send, how to read the answer."""

    service: ClassVar[str]
    needs_key: ClassVar[bool] = True

    def path(self, conversation: Conversation) -> str:
        """The endpoint of the call, relative to the base URL."""
        raise NotImplementedError

    def headers(self, key: str | None) -> dict[str, str]:
        """Authentication (and protocol version) headers."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def check(self, config: AiCoreProviderConfig) -> None:
        """Refuse, before any call, what the vendor is known to reject."""

    def body(self, conversation: Conversation) -> dict[str, Any]:
        """The JSON request."""
        raise NotImplementedError

    def parse(self, answer: dict[str, Any]) -> Reply:
        """The reply; raises for content rejections and answers without text."""
        raise NotImplementedError

    def bad_request(self, response: httpx.Response) -> Exception:
        """The error for a 400: a content rejection, rejected credentials or (usually) invalid input."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        message, codes = _error_fields(body)
        if codes & CONTENT_ERROR_CODES:
            return _rejected(f"request rejected by the content policy: {message}", service=self.service)
        if "api_key_invalid" in codes:
            return ProviderFatalError(f"{self.service}: credentials rejected ({message[:_DETAIL_CHARS]})")
        return RemoteInputError(
            f"{self.service} rejected the request (HTTP 400): {message[:_DETAIL_CHARS]}",
            details={"service": self.service, "status": 400},
        )

    def empty(self, finish_reason: str | None) -> RemoteJobFailedError:
        """The error for an answer without text."""
        return RemoteJobFailedError(f"{self.service}: the answer has no text (finish reason {finish_reason!r})")


class OpenAIChat(_Vendor):
    """OpenAI chat completions."""

    service: ClassVar[str] = "openai"

    def path(self, conversation: Conversation) -> str:
        """``/v1/chat/completions``."""
        return "v1/chat/completions"

    def body(self, conversation: Conversation) -> dict[str, Any]:
        """System message, then the user's text and ``image_url`` data URLs."""
        messages: list[dict[str, Any]] = []
        if conversation.system_prompt:
            messages.append({"role": "system", "content": conversation.system_prompt})
        content: str | list[dict[str, Any]] = conversation.prompt
        if conversation.images:
            content = [{"type": "text", "text": conversation.prompt}] + [
                {"type": "image_url", "image_url": {"url": image.data_uri}} for image in conversation.images
            ]
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": conversation.model, "messages": messages}
        reasoning = bool(OPENAI_REASONING_MODEL.match(conversation.model))
        if not reasoning:
            body["temperature"] = conversation.temperature
        if conversation.max_tokens is not None:
            body["max_completion_tokens" if reasoning else "max_tokens"] = conversation.max_tokens
        return body

    def parse(self, answer: dict[str, Any]) -> Reply:
        """The first choice's message."""
        choices = _list(answer.get("choices"))
        if not choices:
            raise RemoteJobFailedError("openai: the answer has no choices")
        choice = _dict(choices[0])
        finish = choice.get("finish_reason")
        message = _dict(choice.get("message"))
        if finish == "content_filter":
            raise _rejected(
                "the answer was stopped by the content filter (finish_reason content_filter)", service=self.service
            )
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            raise _rejected(f"the model refused: {message['refusal']}", service=self.service)
        content = message.get("content")
        if isinstance(content, list):  # some compatible servers answer content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str) or not content.strip():
            raise self.empty(finish)
        usage = _dict(answer.get("usage"))
        return Reply(content, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")), finish)


class AnthropicMessages(_Vendor):
    """Anthropic messages."""

    service: ClassVar[str] = "anthropic"

    def path(self, conversation: Conversation) -> str:
        """``/v1/messages``."""
        return "v1/messages"

    def headers(self, key: str | None) -> dict[str, str]:
        """``x-api-key`` and the API version."""
        return {"x-api-key": key or "", "anthropic-version": ANTHROPIC_VERSION}

    def check(self, config: AiCoreProviderConfig) -> None:
        """Anthropic's temperature range is 0–1 (the shared config allows up to 2)."""
        if config.temperature > 1.0:
            raise InvalidInputError(
                f"anthropic accepts a temperature between 0 and 1, not {config.temperature:g}",
                loc=("provider_config", "temperature"),
            )

    def body(self, conversation: Conversation) -> dict[str, Any]:
        """Base64 ``image`` blocks first, then the text; the system prompt is top-level."""
        content: list[dict[str, Any]] = [
            {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.base64}}
            for image in conversation.images
        ]
        content.append({"type": "text", "text": conversation.prompt})
        body: dict[str, Any] = {
            "model": conversation.model,
            "max_tokens": conversation.max_tokens or ANTHROPIC_DEFAULT_MAX_TOKENS,
        }
        if conversation.system_prompt:
            body["system"] = conversation.system_prompt
        body["messages"] = [{"role": "user", "content": content}]
        body["temperature"] = conversation.temperature
        return body

    def parse(self, answer: dict[str, Any]) -> Reply:
        """The text blocks, joined."""
        stop = answer.get("stop_reason")
        if stop == "refusal":
            raise _rejected("the model refused to answer (stop_reason refusal)", service=self.service)
        blocks = [_dict(block) for block in _list(answer.get("content"))]
        text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
        if not text.strip():
            raise self.empty(stop)
        usage = _dict(answer.get("usage"))
        input_tokens = _sum_tokens(
            usage.get("input_tokens"), usage.get("cache_creation_input_tokens"), usage.get("cache_read_input_tokens")
        )
        return Reply(text, input_tokens, _int(usage.get("output_tokens")), stop)


class GeminiGenerateContent(_Vendor):
    """Gemini ``generateContent`` on the Google AI API."""

    service: ClassVar[str] = "gemini"

    def path(self, conversation: Conversation) -> str:
        """``/v1beta/models/{model}:generateContent`` (the model name is escaped: it comes from the request)."""
        model = conversation.model.removeprefix("models/")
        return f"v1beta/models/{urllib.parse.quote(model, safe='-._')}:generateContent"

    def headers(self, key: str | None) -> dict[str, str]:
        """The key as a header, so that it never appears in a URL (or a log of one)."""
        return {"x-goog-api-key": key or ""}

    def body(self, conversation: Conversation) -> dict[str, Any]:
        """Text then ``inline_data`` parts; the system prompt as ``systemInstruction``."""
        parts: list[dict[str, Any]] = [{"text": conversation.prompt}] + [
            {"inline_data": {"mime_type": image.mime, "data": image.base64}} for image in conversation.images
        ]
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
        if conversation.system_prompt:
            body["systemInstruction"] = {"parts": [{"text": conversation.system_prompt}]}
        generation: dict[str, Any] = {"temperature": conversation.temperature}
        if conversation.max_tokens is not None:
            generation["maxOutputTokens"] = conversation.max_tokens
        body["generationConfig"] = generation
        return body

    def parse(self, answer: dict[str, Any]) -> Reply:
        """The first candidate's text parts (thoughts left out)."""
        feedback = _dict(answer.get("promptFeedback"))
        candidates = _list(answer.get("candidates"))
        if feedback.get("blockReason"):
            raise _rejected(f"the prompt was blocked (blockReason {feedback['blockReason']})", service=self.service)
        if not candidates:
            raise RemoteJobFailedError("gemini: the answer has no candidates")
        candidate = _dict(candidates[0])
        finish = candidate.get("finishReason")
        if finish in GEMINI_BLOCKED_FINISH:
            raise _rejected(f"the answer was blocked (finishReason {finish})", service=self.service)
        parts = [_dict(part) for part in _list(_dict(candidate.get("content")).get("parts"))]
        text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought"))
        if not text.strip():
            raise self.empty(finish)
        usage = _dict(answer.get("usageMetadata"))
        output_tokens = _sum_tokens(usage.get("candidatesTokenCount"), usage.get("thoughtsTokenCount"))
        return Reply(text, _int(usage.get("promptTokenCount")), output_tokens, finish)


class OllamaChat(_Vendor):
    """Ollama's chat endpoint, non-streaming."""

    service: ClassVar[str] = "ollama"
    needs_key: ClassVar[bool] = False

    def path(self, conversation: Conversation) -> str:
        """``/api/chat``."""
        return "api/chat"

    def body(self, conversation: Conversation) -> dict[str, Any]:
        """Plain-text messages; images as bare base64 strings on the user message."""
        messages: list[dict[str, Any]] = []
        if conversation.system_prompt:
            messages.append({"role": "system", "content": conversation.system_prompt})
        user: dict[str, Any] = {"role": "user", "content": conversation.prompt}
        if conversation.images:
            user["images"] = [image.base64 for image in conversation.images]
        messages.append(user)
        options: dict[str, Any] = {"temperature": conversation.temperature}
        if conversation.max_tokens is not None:
            options["num_predict"] = conversation.max_tokens
        return {"model": conversation.model, "messages": messages, "stream": False, "options": options}

    def parse(self, answer: dict[str, Any]) -> Reply:
        """The assistant message."""
        message = _dict(answer.get("message"))
        finish = answer.get("done_reason") if isinstance(answer.get("done_reason"), str) else None
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise self.empty(finish)
        return Reply(content, _int(answer.get("prompt_eval_count")), _int(answer.get("eval_count")), finish)


VENDORS: dict[str, _Vendor] = {
    vendor.service: vendor for vendor in (OpenAIChat(), AnthropicMessages(), GeminiGenerateContent(), OllamaChat())
}


class AiCoreProvider:
    """LLM_INTERACTION on the vendor that ``provider_config.ai_provider`` names."""

    provider_type: ClassVar[ProviderType] = ProviderType.AICORE
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.LLM_INTERACTION})

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Send the prompt (and images) in one call and keep the text and token counts."""
        config = (
            ctx.config
            if isinstance(ctx.config, AiCoreProviderConfig)
            else AiCoreProviderConfig.model_validate(ctx.config.model_dump())
        )
        vendor = VENDORS[config.ai_provider]
        service: RemoteServiceSettings = getattr(self.settings, vendor.service)
        key = service.api_key.get_secret_value() if service.api_key else None
        if vendor.needs_key and not key:
            setting = f"ATELIER_PROVIDERS__{vendor.service.upper()}__API_KEY"
            raise ProviderFatalError(
                f"AiCore {vendor.service}: no API key configured (set {setting})",
                category=ErrorCategory.PROVIDER_NOT_AVAILABLE,
            )
        prompt = ctx.inputs.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidInputError("prompt is required", loc=("prompt",))
        vendor.check(config)
        conversation = Conversation(
            model=config.model,
            prompt=prompt,
            system_prompt=ctx.inputs.get("system_prompt") or None,
            images=self._images(ctx),
            max_tokens=config.max_tokens,
            temperature=config.temperature,
        )
        ctx.progress(10.0)
        client = ServiceClient(ctx, service, service=vendor.service, headers=vendor.headers(key))
        response = client.request(
            "POST",
            vendor.path(conversation),
            json_body=vendor.body(conversation),
            idempotent=True,  # a chat call has no side effect: repeating it costs tokens, never state
            ok_statuses=frozenset({400}),
        )
        if response.status_code == 400:
            raise vendor.bad_request(response)
        answer = client.decode(response)
        if not isinstance(answer, dict):
            raise RemoteJobFailedError(f"{vendor.service}: the answer is not a JSON object")
        reply = vendor.parse(answer)
        ctx.progress(100.0)
        return ProviderResult(
            outputs={
                "result_text": reply.text,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "finish_reason": reply.finish_reason,
            }
        )

    @staticmethod
    def _images(ctx: ProviderContext) -> list[Payload]:
        images: list[Payload] = []
        for source in ctx.inputs.get("input_images") or []:
            ctx.check_cancelled()
            images.append(image_payload(ctx, source, "input_images"))
        return images


def providers(settings: ProviderSettings) -> list[Any]:
    """AiCore, connected to every vendor it may call."""
    return [AiCoreProvider(settings)]
