"""A local fake of four chat APIs (OpenAI, Anthropic, Gemini, Ollama) in one app, driven by a per-call script.

Routes: ``POST /v1/chat/completions`` (OpenAI, ``Authorization: Bearer``), ``POST /v1/messages`` (Anthropic,
``x-api-key`` + ``anthropic-version``), ``POST /v1beta/models/{model}:generateContent`` (Gemini,
``x-goog-api-key``; a bad key answers 400 ``API_KEY_INVALID`` as Google does), ``POST /api/chat`` (Ollama, no
auth unless a key is set), and ``GET /files/{name}`` (images in ``LLMFake.files``, for URL inputs).

Every call is recorded (``LLMFake.calls``) and takes the next behaviour from ``LLMFake.script`` (default
``"ok"``), whatever the vendor:

- ``ok``: ``"<vendor> saw <n> image(s) for: <prompt>"`` (``+system`` after the vendor when a system prompt was
  given), with ``input_tokens(...)``/``output_tokens(...)`` as usage;
- ``filtered``: the vendor's content-filter shape (OpenAI ``finish_reason: content_filter``, Anthropic
  ``stop_reason: refusal``, Gemini ``promptFeedback.blockReason``); Ollama has no filter and answers ``ok``;
- ``filtered_output``: Gemini's candidate ``finishReason: SAFETY`` (others: as ``filtered``);
- ``policy400``: OpenAI's 400 with code ``content_filter`` (others: as ``filtered``);
- ``empty``: a well-formed answer without text;
- ``429``: refused with ``Retry-After: LLMFake.retry_after`` in the vendor's error shape;
- ``500``: 500; ``529``: Anthropic's 529 ``overloaded_error`` (others: 503);
- ``invalid``: 400 in the vendor's error shape (Ollama: 404 model not found);
- ``malformed``: 200 with an HTML body.

The request itself is checked the way the vendors do (auth, required fields, images decodable inline): a bad one
answers 400/401 without consuming a script step.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from tests.fakes.scripted import ScriptedFake

VENDORS = ("openai", "anthropic", "gemini", "ollama")
INVALID_KIND = {"openai": "invalid_request_error", "anthropic": "invalid_request_error", "gemini": "INVALID_ARGUMENT"}
TOKENS_PER_IMAGE = 100


@dataclass
class LLMCall:
    """One request the fake received."""

    vendor: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class LLMFake(ScriptedFake):
    """State of the fake; tests read ``calls`` and ``counts``."""

    keys: dict[str, str | None] = field(
        default_factory=lambda: {
            "openai": "sk-test-openai",
            "anthropic": "sk-ant-test",
            "gemini": "gm-test-key",
            "ollama": None,
        }
    )
    script: list[str] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    files: dict[str, bytes] = field(default_factory=dict)
    retry_after: str = "1"
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self, vendor: str) -> LLMCall:
        """The latest call to ``vendor``."""
        return [call for call in self.calls if call.vendor == vendor][-1]


def answer_text(vendor: str, prompt: str, images: int, system: bool) -> str:
    """The text of an ``ok`` answer."""
    who = f"{vendor}+system" if system else vendor
    return f"{who} saw {images} image(s) for: {prompt}"


def input_tokens(prompt: str, system: str | None, images: int) -> int:
    """Deterministic prompt usage: one token per word, ``TOKENS_PER_IMAGE`` per image."""
    return len(prompt.split()) + len((system or "").split()) + TOKENS_PER_IMAGE * images


def output_tokens(text: str) -> int:
    """Deterministic answer usage: one token per word."""
    return len(text.split())


class BadRequestError(Exception):
    """The request breaks the vendor's protocol."""


def _image(data: str) -> None:
    try:
        raw = base64.b64decode(data, validate=True)
        Image.open(io.BytesIO(raw)).verify()
    except (binascii.Error, ValueError, OSError) as exc:
        raise BadRequestError(f"image is not valid base64 image data: {exc}") from exc


@dataclass
class Parsed:
    """What a request asked, vendor-neutral."""

    prompt: str
    system: str | None
    images: int


def parse_openai(body: dict[str, Any]) -> Parsed:
    if not body.get("model") or not isinstance(body.get("messages"), list):
        raise BadRequestError("'model' and 'messages' are required")
    system = next((m["content"] for m in body["messages"] if m.get("role") == "system"), None)
    user = next(m for m in body["messages"] if m.get("role") == "user")
    content = user["content"]
    if isinstance(content, str):
        return Parsed(content, system, 0)
    prompt = "".join(p["text"] for p in content if p["type"] == "text")
    images = 0
    for part in content:
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            if not url.startswith("data:image/") or ";base64," not in url:
                raise BadRequestError("this fake only accepts inline data URLs")
            _image(url.split(",", 1)[1])
            images += 1
    return Parsed(prompt, system, images)


def parse_anthropic(body: dict[str, Any]) -> Parsed:
    if not body.get("model") or not isinstance(body.get("max_tokens"), int):
        raise BadRequestError("max_tokens: Field required")
    [user] = body["messages"]
    images = 0
    prompt = ""
    for block in user["content"]:
        if block["type"] == "image":
            if block["source"]["type"] != "base64" or not block["source"]["media_type"].startswith("image/"):
                raise BadRequestError("image source must be base64 with an image media_type")
            _image(block["source"]["data"])
            images += 1
        elif block["type"] == "text":
            prompt += block["text"]
    return Parsed(prompt, body.get("system"), images)


def parse_gemini(body: dict[str, Any]) -> Parsed:
    if not isinstance(body.get("contents"), list):
        raise BadRequestError("contents is required")
    [content] = body["contents"]
    prompt = "".join(p["text"] for p in content["parts"] if "text" in p)
    images = 0
    for part in content["parts"]:
        if "inline_data" in part:
            _image(part["inline_data"]["data"])
            images += 1
    system = body.get("systemInstruction")
    return Parsed(prompt, system["parts"][0]["text"] if system else None, images)


def parse_ollama(body: dict[str, Any]) -> Parsed:
    if not body.get("model"):
        raise BadRequestError("model is required")
    system = next((m["content"] for m in body["messages"] if m.get("role") == "system"), None)
    user = next(m for m in body["messages"] if m.get("role") == "user")
    for image in user.get("images") or []:
        _image(image)
    return Parsed(user["content"], system, len(user.get("images") or []))


def error(vendor: str, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    """An error in the vendor's shape."""
    body: dict[str, Any]
    if vendor == "openai":
        body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    elif vendor == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif vendor == "gemini":
        body = {"error": {"code": status, "message": message, "status": kind}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def ok(vendor: str, parsed: Parsed, model: str) -> Response:
    text = answer_text(vendor, parsed.prompt, parsed.images, parsed.system is not None)
    used_in, used_out = input_tokens(parsed.prompt, parsed.system, parsed.images), output_tokens(text)
    if vendor == "openai":
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": used_in, "completion_tokens": used_out, "total_tokens": used_in + used_out},
            }
        )
    if vendor == "anthropic":
        return JSONResponse(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": used_in, "output_tokens": used_out},
            }
        )
    if vendor == "gemini":
        return JSONResponse(
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                "usageMetadata": {
                    "promptTokenCount": used_in,
                    "candidatesTokenCount": used_out,
                    "totalTokenCount": used_in + used_out,
                },
                "modelVersion": model,
            }
        )
    return JSONResponse(
        {
            "model": model,
            "message": {"role": "assistant", "content": text},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": used_in,
            "eval_count": used_out,
        }
    )


def filtered(vendor: str, behaviour: str, parsed: Parsed, model: str) -> Response:
    if vendor == "openai" and behaviour == "policy400":
        message = "The response was filtered due to the prompt triggering the content management policy."
        return error(vendor, 400, message, "content_filter")
    if vendor == "openai":
        choice = {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
        return JSONResponse({"id": "chatcmpl-2", "choices": [choice], "usage": {"prompt_tokens": 5}})
    if vendor == "anthropic":
        return JSONResponse(
            {"id": "msg_2", "content": [], "stop_reason": "refusal", "usage": {"input_tokens": 5, "output_tokens": 0}}
        )
    if vendor == "gemini" and behaviour == "filtered_output":
        candidate = {"finishReason": "SAFETY", "safetyRatings": [{"category": "HARM", "probability": "HIGH"}]}
        return JSONResponse({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 5}})
    if vendor == "gemini":
        return JSONResponse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    return ok(vendor, parsed, model)


def empty(vendor: str) -> Response:
    if vendor == "openai":
        choice = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
        return JSONResponse({"choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 0}})
    if vendor == "anthropic":
        return JSONResponse(
            {"content": [], "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 0}}
        )
    if vendor == "gemini":
        return JSONResponse({"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}]})
    return JSONResponse({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"})


def create_llm_app(fake: LLMFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()

    @app.get("/files/{name}")
    def file(name: str) -> Response:
        data = fake.files.get(name)
        return Response(data, media_type="image/png") if data is not None else Response(status_code=404)

    async def handle(vendor: str, request: Request, model: str | None = None) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        fake.calls.append(LLMCall(vendor, request.url.path, dict(request.query_params), dict(request.headers), body))
        fake.counts[vendor] += 1
        denied = authenticate(vendor, request)
        if denied is not None:
            return denied
        parser = {"openai": parse_openai, "anthropic": parse_anthropic, "gemini": parse_gemini, "ollama": parse_ollama}
        try:
            if not isinstance(body, dict):
                raise BadRequestError("the body is not a JSON object")
            parsed = parser[vendor](body)
        except (BadRequestError, KeyError, TypeError, ValueError, StopIteration) as exc:
            return error(vendor, 400, f"invalid request: {exc}", INVALID_KIND[vendor])
        model = model or str(body.get("model"))
        behaviour = fake.next_behaviour()
        return respond(vendor, behaviour, parsed, model)

    def authenticate(vendor: str, request: Request) -> Response | None:
        key = fake.keys.get(vendor)
        if vendor == "openai" and request.headers.get("authorization") != f"Bearer {key}":
            return error(vendor, 401, "Incorrect API key provided.", "invalid_api_key")
        if vendor == "anthropic":
            if request.headers.get("x-api-key") != key:
                return error(vendor, 401, "invalid x-api-key", "authentication_error")
            if not request.headers.get("anthropic-version"):
                return error(vendor, 400, "anthropic-version: header is required", "invalid_request_error")
        if vendor == "gemini" and request.headers.get("x-goog-api-key") != key:
            body = {
                "error": {
                    "code": 400,
                    "message": "API key not valid. Please pass a valid API key.",
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                        }
                    ],
                }
            }
            return JSONResponse(body, status_code=400)
        if vendor == "ollama" and key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return None

    def respond(vendor: str, behaviour: str, parsed: Parsed, model: str) -> Response:
        if behaviour == "ok":
            return ok(vendor, parsed, model)
        if behaviour in ("filtered", "filtered_output", "policy400"):
            return filtered(vendor, behaviour, parsed, model)
        if behaviour == "empty":
            return empty(vendor)
        if behaviour == "429":
            kind = {"anthropic": "rate_limit_error", "gemini": "RESOURCE_EXHAUSTED"}.get(vendor, "rate_limit_exceeded")
            return error(vendor, 429, "Rate limit reached", kind, headers={"Retry-After": fake.retry_after})
        if behaviour == "500":
            kind = {"anthropic": "api_error", "gemini": "INTERNAL"}.get(vendor, "server_error")
            return error(vendor, 500, "The server had an error while processing your request.", kind)
        if behaviour == "529":
            if vendor == "anthropic":
                return error(vendor, 529, "Overloaded", "overloaded_error")
            kind = "UNAVAILABLE" if vendor == "gemini" else "server_error"
            return error(vendor, 503, "The model is overloaded. Please try again later.", kind)
        if behaviour == "invalid":
            if vendor == "ollama":
                return error(vendor, 404, f'model "{model}" not found, try pulling it first', "")
            message = f"The model `{model}` does not exist or you do not have access to it."
            return error(vendor, 400, message, INVALID_KIND[vendor])
        if behaviour == "malformed":
            return PlainTextResponse("<html><body>502 Bad Gateway</body></html>", status_code=200)
        raise AssertionError(f"unknown behaviour {behaviour!r}")

    @app.post("/v1/chat/completions")
    async def openai(request: Request) -> Response:
        return await handle("openai", request)

    @app.post("/v1/messages")
    async def anthropic(request: Request) -> Response:
        return await handle("anthropic", request)

    @app.post("/v1beta/models/{model}:generateContent")
    async def gemini(model: str, request: Request) -> Response:
        return await handle("gemini", request, model)

    @app.post("/api/chat")
    async def ollama(request: Request) -> Response:
        return await handle("ollama", request)

    return app
