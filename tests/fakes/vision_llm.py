"""A protocol fake of vision LLMs answering shot evaluations, built on the chat-API fake's request checks.

Routes: OpenAI ``POST /v1/chat/completions`` (``Authorization: Bearer``), Gemini ``POST
/v1beta/models/{model}:generateContent`` (``x-goog-api-key``) and Vertex express mode ``POST
/v1/publishers/google/models/{model}:generateContent`` (``x-goog-api-key``). Requests are checked with the
``tests.fakes.llm`` parsers (body shape, inline images decodable) and must ask for structured output (OpenAI
``response_format`` of type ``json_schema`` with a schema, Gemini/Vertex ``responseMimeType: application/json``
with ``responseJsonSchema``): otherwise 400. Errors use each vendor's shape (``tests.fakes.llm.error``).

Each accepted call takes the next behaviour from ``script`` (``ok`` once it is empty):

- ``ok``: the text is ``json.dumps(answer)``; ``fenced``: the same inside a Markdown ``json`` fence;
- ``prose``: a sentence instead of JSON; ``wrong_enum``: the answer with framing ``wide_shot``; ``missing``: the
  answer without ``collage_detected``; ``empty``: an answer without text;
- ``refused``: the vendor's refusal (OpenAI ``message.refusal``, Gemini ``promptFeedback.blockReason``);
- ``500``: a server error; ``429``: rate limited with ``Retry-After: retry_after``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.fakes.llm import BadRequestError, LLMCall, Parsed, _image, error, parse_gemini, parse_openai
from tests.fakes.scripted import ScriptedFake

OPENAI_KEY = "sk-test-vision"
GOOGLE_KEY = "gm-test-vision"
GOOD_ANSWER: dict[str, Any] = {
    "human_detected": True,
    "number_of_people": 1,
    "human_presence_confidence": 0.98,
    "framing": "full_body",
    "view_angle": "front",
    "shot_type_confidence": 0.9,
    "anatomy_correct": False,
    "anatomy_issues": ["extra_fingers"],
    "anatomy_confidence": 0.7,
    "gender": "FEMALE",
    "gender_confidence": 0.95,
    "collage_detected": False,
    "garment_description": "A red knee-length dress.",
    "subject_description": "A woman standing upright.",
    "scene_description": "A plain grey studio.",
}


@dataclass
class VisionLLMFake(ScriptedFake):
    """State of the fake; tests set ``answer``/``script`` and read ``calls``."""

    answer: dict[str, Any] = field(default_factory=lambda: dict(GOOD_ANSWER))
    script: list[str] = field(default_factory=list)
    calls: list[LLMCall] = field(default_factory=list)
    retry_after: str = "0"
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        """Back to a fresh state (the server is shared by the tests of a module)."""
        self.answer = dict(GOOD_ANSWER)
        self.script.clear()
        self.calls.clear()


def answer_text(fake: VisionLLMFake, behaviour: str) -> str | None:
    """The model's text for a content behaviour (None: no text at all)."""
    if behaviour == "fenced":
        return "```json\n" + json.dumps(fake.answer) + "\n```"
    if behaviour == "prose":
        return "The image shows a woman in a red dress, photographed from the front."
    if behaviour == "wrong_enum":
        return json.dumps({**fake.answer, "framing": "wide_shot"})
    if behaviour == "missing":
        return json.dumps({key: value for key, value in fake.answer.items() if key != "collage_detected"})
    if behaviour == "empty":
        return None
    return json.dumps(fake.answer)


def openai_answer(text: str | None, refused: bool) -> Response:
    message: dict[str, Any] = {"role": "assistant", "content": text or ""}
    if refused:
        message = {"role": "assistant", "content": None, "refusal": "I can't help with that image."}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return JSONResponse(
        {"id": "chatcmpl-v", "choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 9}}
    )


def google_answer(text: str | None, refused: bool) -> Response:
    if refused:
        return JSONResponse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    parts = [{"text": text}] if text is not None else []
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}
    return JSONResponse({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 9}, "responseId": "r-1"})


def parse_vertex(body: dict[str, Any]) -> Parsed:
    """Vertex's camelCase parts (``inlineData``), checked like the Gemini ones."""
    [content] = body["contents"]
    prompt = "".join(part["text"] for part in content["parts"] if "text" in part)
    images = 0
    for part in content["parts"]:
        if "inlineData" in part:
            _image(part["inlineData"]["data"])
            images += 1
    return Parsed(prompt, body["systemInstruction"]["parts"][0]["text"], images)


def structured(vendor: str, body: dict[str, Any]) -> bool:
    """Whether the request asks for JSON output with a schema."""
    if vendor == "openai":
        fmt = body.get("response_format") or {}
        return fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema", {}).get("schema"), dict)
    config = body.get("generationConfig") or {}
    return config.get("responseMimeType") == "application/json" and isinstance(config.get("responseJsonSchema"), dict)


def create_vision_app(fake: VisionLLMFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()
    parsers = {"openai": parse_openai, "gemini": parse_gemini, "vertex": parse_vertex}

    async def handle(vendor: str, request: Request) -> Response:
        body: Any = json.loads(await request.body())
        fake.calls.append(LLMCall(vendor, request.url.path, dict(request.query_params), dict(request.headers), body))
        if not authorised(vendor, request):
            return error("openai" if vendor == "openai" else "gemini", 401, "bad credentials", "UNAUTHENTICATED")
        shape = "openai" if vendor == "openai" else "gemini"
        try:
            parsers[vendor](body)
            if not structured(vendor, body):
                raise BadRequestError("structured output (a JSON schema) was not requested")
        except (BadRequestError, KeyError, TypeError, ValueError) as exc:
            return error(shape, 400, f"invalid request: {exc}", "INVALID_ARGUMENT")
        behaviour = fake.next_behaviour()
        if behaviour == "500":
            return error(shape, 500, "internal error", "INTERNAL")
        if behaviour == "429":
            return error(shape, 429, "slow down", "RESOURCE_EXHAUSTED", headers={"Retry-After": fake.retry_after})
        build = openai_answer if vendor == "openai" else google_answer
        return build(answer_text(fake, behaviour), behaviour == "refused")

    def authorised(vendor: str, request: Request) -> bool:
        if vendor == "openai":
            return request.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
        return request.headers.get("x-goog-api-key") == GOOGLE_KEY

    @app.post("/v1/chat/completions")
    async def openai(request: Request) -> Response:
        return await handle("openai", request)

    @app.post("/v1beta/models/{model}:generateContent")
    async def gemini(model: str, request: Request) -> Response:
        return await handle("gemini", request)

    @app.post("/v1/publishers/google/models/{action}")
    async def vertex(action: str, request: Request) -> Response:
        return await handle("vertex", request)

    return app
