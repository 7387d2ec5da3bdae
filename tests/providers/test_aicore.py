"""AiCore (LLM_INTERACTION) against a local fake of the OpenAI, Anthropic, Gemini and Ollama chat APIs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from atelier.providers.base import ProviderFatalError
from atelier.providers.remote.aicore import AnthropicMessages, Conversation, GeminiGenerateContent, OpenAIChat, Reply
from atelier.providers.remote.client import RemoteJobFailedError
from atelier.tasks.enums import ErrorCategory
from tests.conftest import Api, AppFactory, b64_png, data_url, png_bytes
from tests.fakes.llm import VENDORS, LLMFake, answer_text, create_llm_app, input_tokens, output_tokens
from tests.fakes.server import serve_fake
from tests.providers.conftest import remote_api, service, task_row

PROMPT = "Describe the garment in one sentence"
SYSTEM = "You are a terse fashion assistant."
IMAGE = ((20, 10), "blue")


@pytest.fixture
def llm() -> Iterator[LLMFake]:
    with serve_fake(LLMFake(), create_llm_app) as fake:
        yield fake


def llm_api(app_factory: AppFactory, fake: LLMFake, max_retries: int = 2, **overrides: dict[str, Any]) -> Api:
    """An app whose four vendors all point at the fake, with the fake's keys unless overridden."""
    services: dict[str, Any] = {name: service(fake.base_url, fake.keys.get(name)) for name in VENDORS}
    services.update(overrides)
    return remote_api(app_factory, max_retries=max_retries, **services)


def interaction(ai_provider: str, model: str, images: list[str] | None = None, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_type": "LLM_INTERACTION",
        "prompt": PROMPT,
        "provider_type": "AICORE",
        "provider_config": {"ai_provider": ai_provider, "model": model, **config},
    }
    if images is not None:
        body["input_images"] = images
    return body


def with_system(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "system_prompt": SYSTEM}


def assert_answered(task: dict[str, Any], vendor: str, images: int, system: str | None) -> None:
    assert task["status"] == "COMPLETED", task["errors"]
    text = answer_text(vendor, PROMPT, images, system is not None)
    assert task["result_text"] == text
    assert task["input_tokens"] == input_tokens(PROMPT, system, images)
    assert task["output_tokens"] == output_tokens(text)


def assert_no_secret(api: Api, task: dict[str, Any], fake: LLMFake) -> None:
    row = task_row(api, task["id"])
    stored = json.dumps([task, row.task_data, row.service_requests, row.errors, row.provider_config], default=str)
    for key in filter(None, fake.keys.values()):
        assert key not in stored


# ------------------------------------------------------------------------------------------ happy paths


def test_openai_sends_the_image_as_a_data_url_and_keeps_text_and_usage(app_factory: AppFactory, llm: LLMFake) -> None:
    api = llm_api(app_factory, llm)
    body = with_system(interaction("openai", "gpt-4o-mini", [data_url(*IMAGE)], max_tokens=50, temperature=0.2))
    task = api.wait(api.create(body)["id"])

    assert_answered(task, "openai", 1, SYSTEM)
    call = llm.last("openai")
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == "Bearer sk-test-openai"
    assert call.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PROMPT},
                    {"type": "image_url", "image_url": {"url": data_url(*IMAGE)}},
                ],
            },
        ],
        "temperature": 0.2,
        "max_tokens": 50,
    }
    assert task_row(api, task["id"]).task_data["finish_reason"] == "stop"
    assert task["service_task_id"] is None  # a synchronous call: no remote job to resume
    [logged] = task["service_requests"]
    assert (logged["service"], logged["method"], logged["status"]) == ("openai", "POST", 200)
    assert_no_secret(api, task, llm)


def test_anthropic_sends_base64_image_blocks_and_a_top_level_system(app_factory: AppFactory, llm: LLMFake) -> None:
    api = llm_api(app_factory, llm)
    body = with_system(interaction("anthropic", "claude-sonnet-4-5", [data_url(*IMAGE)], temperature=0.5))
    task = api.wait(api.create(body)["id"])

    assert_answered(task, "anthropic", 1, SYSTEM)
    call = llm.last("anthropic")
    assert call.path == "/v1/messages"
    assert call.headers["x-api-key"] == "sk-ant-test"
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in call.headers
    assert call.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,  # required by Anthropic: the default when the config sets none
        "system": SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64_png(*IMAGE)}},
                    {"type": "text", "text": PROMPT},
                ],
            }
        ],
        "temperature": 0.5,
    }
    assert task_row(api, task["id"]).task_data["finish_reason"] == "end_turn"
    assert_no_secret(api, task, llm)


def test_gemini_sends_inline_data_and_the_key_only_in_a_header(app_factory: AppFactory, llm: LLMFake) -> None:
    api = llm_api(app_factory, llm)
    body = with_system(interaction("gemini", "models/gemini-2.0-flash", [data_url(*IMAGE)], max_tokens=256))
    task = api.wait(api.create(body)["id"])

    assert_answered(task, "gemini", 1, SYSTEM)
    call = llm.last("gemini")
    assert call.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert call.query == {}  # never ?key=
    assert call.headers["x-goog-api-key"] == "gm-test-key"
    assert call.body == {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": PROMPT}, {"inline_data": {"mime_type": "image/png", "data": b64_png(*IMAGE)}}],
            }
        ],
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 256},
    }
    assert all("gm-test-key" not in r["url"] for r in task["service_requests"])
    assert task_row(api, task["id"]).task_data["finish_reason"] == "STOP"
    assert_no_secret(api, task, llm)


def test_ollama_sends_bare_base64_images_including_fetched_urls(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.files["swatch.png"] = png_bytes((12, 12), "green")
    api = llm_api(app_factory, llm)
    images = [f"{llm.base_url}/files/swatch.png", data_url(*IMAGE)]
    task = api.wait(api.create(interaction("ollama", "llava:13b", images, temperature=0.0))["id"])

    assert_answered(task, "ollama", 2, None)
    call = llm.last("ollama")
    assert call.path == "/api/chat"
    assert "authorization" not in call.headers
    assert call.body == {
        "model": "llava:13b",
        "messages": [{"role": "user", "content": PROMPT, "images": [b64_png((12, 12), "green"), b64_png(*IMAGE)]}],
        "stream": False,
        "options": {"temperature": 0.0},
    }
    assert task["input_images"][0] == images[0]


def test_openai_reasoning_models_get_max_completion_tokens_and_no_temperature(
    app_factory: AppFactory, llm: LLMFake
) -> None:
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("openai", "o3-mini", max_tokens=64))["id"])
    assert_answered(task, "openai", 0, None)
    assert llm.last("openai").body == {
        "model": "o3-mini",
        "messages": [{"role": "user", "content": PROMPT}],  # no image: plain string content
        "max_completion_tokens": 64,
    }


# ------------------------------------------------------------------------------------------ transient failures


def test_rate_limit_is_waited_out_within_the_attempt(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.script = ["429"]
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("openai", "gpt-4o-mini"))["id"])
    assert_answered(task, "openai", 0, None)
    assert task["retry_count"] == 0
    assert llm.counts["openai"] == 2
    assert [r["status"] for r in task["service_requests"]] == [429, 200]


def test_server_errors_and_anthropic_overload_are_retried(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.script = ["529", "500"]
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("anthropic", "claude-x", [data_url(*IMAGE)]))["id"])
    assert_answered(task, "anthropic", 1, None)
    assert task["retry_count"] == 0
    assert llm.counts["anthropic"] == 3
    assert [r["status"] for r in task["service_requests"]] == [529, 500, 200]


def test_malformed_answer_fails_the_attempt_and_the_retry_asks_again(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.script = ["malformed"]
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("gemini", "gemini-2.0-flash"))["id"])
    assert_answered(task, "gemini", 0, None)
    assert task["retry_count"] == 1
    assert "malformed response" in task["errors"][0]
    assert llm.counts["gemini"] == 2


def test_an_answer_without_text_is_retried(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.script = ["empty"]
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("ollama", "llama3.2"))["id"])
    assert_answered(task, "ollama", 0, None)
    assert task["retry_count"] == 1
    assert "has no text" in task["errors"][0]


# ------------------------------------------------------------------------------------------ permanent failures


@pytest.mark.parametrize(
    ("vendor", "behaviour", "reason"),
    [
        ("openai", "filtered", "content_filter"),
        ("openai", "policy400", "content policy"),
        ("anthropic", "filtered", "refusal"),
        ("gemini", "filtered", "blockReason SAFETY"),
        ("gemini", "filtered_output", "finishReason SAFETY"),
    ],
)
def test_content_filter_fails_as_content_rejected_without_retry(
    app_factory: AppFactory, llm: LLMFake, vendor: str, behaviour: str, reason: str
) -> None:
    llm.script = [behaviour]
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction(vendor, "some-model", [data_url(*IMAGE)]))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "CONTENT_REJECTED"
    assert task["retry_count"] == 0
    assert reason in task["errors"][-1]
    assert llm.counts[vendor] == 1
    assert task["result_text"] is None


@pytest.mark.parametrize("vendor", VENDORS)
def test_invalid_request_is_never_retried_nor_handed_to_the_fallback(
    app_factory: AppFactory, llm: LLMFake, vendor: str
) -> None:
    llm.script = ["invalid"]
    api = llm_api(app_factory, llm)
    body = interaction(vendor, "no-such-model")
    body.update(fallback_provider_type="AICORE", fallback_provider_config={"ai_provider": "ollama", "model": "x"})
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert "no-such-model" in task["errors"][-1]
    assert len(llm.calls) == 1


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "gemini"])
def test_missing_api_key_fails_at_once_naming_the_setting(app_factory: AppFactory, llm: LLMFake, vendor: str) -> None:
    api = llm_api(app_factory, llm, 2, **{vendor: service(llm.base_url)})
    task = api.wait(api.create(interaction(vendor, "m"))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_NOT_AVAILABLE"
    assert f"ATELIER_PROVIDERS__{vendor.upper()}__API_KEY" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert llm.calls == []


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "gemini"])
def test_rejected_key_fails_without_retry_and_is_never_echoed(
    app_factory: AppFactory, llm: LLMFake, vendor: str
) -> None:
    api = llm_api(app_factory, llm, 2, **{vendor: service(llm.base_url, "wrong-secret-key")})
    task = api.wait(api.create(interaction(vendor, "m"))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_ERROR"
    assert "credentials rejected" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert llm.counts[vendor] == 1
    assert "wrong-secret-key" not in json.dumps(task)


def test_anthropic_temperature_above_one_is_refused_before_any_call(app_factory: AppFactory, llm: LLMFake) -> None:
    api = llm_api(app_factory, llm)
    task = api.wait(api.create(interaction("anthropic", "claude-x", temperature=1.5))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "temperature" in task["errors"][-1]
    assert llm.calls == []


def test_fallback_to_another_vendor_when_the_primary_keeps_failing(app_factory: AppFactory, llm: LLMFake) -> None:
    llm.script = ["500"]
    openai = service(llm.base_url, llm.keys["openai"], call_attempts=1)
    api = llm_api(app_factory, llm, max_retries=0, openai=openai)
    body = interaction("openai", "gpt-4o-mini", [data_url(*IMAGE)])
    body.update(
        fallback_provider_type="AICORE",
        fallback_provider_config={"provider_type": "AICORE", "ai_provider": "anthropic", "model": "claude-x"},
    )
    task = api.wait(api.create(body)["id"])

    assert_answered(task, "anthropic", 1, None)
    assert [call.vendor for call in llm.calls] == ["openai", "anthropic"]
    assert llm.last("anthropic").body["model"] == "claude-x"
    assert "fallback AICORE activated" in task["errors"][0]
    assert [r["service"] for r in task["service_requests"]] == ["openai", "anthropic"]
    assert_no_secret(api, task, llm)


# ------------------------------------------------------------------------------------------ answer parsing


def test_gemini_leaves_thoughts_out_of_the_text_but_counts_their_tokens() -> None:
    answer = {
        "candidates": [
            {
                "content": {"parts": [{"text": "thinking…", "thought": True}, {"text": "A red "}, {"text": "dress."}]},
                "finishReason": "MAX_TOKENS",
            }
        ],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3, "thoughtsTokenCount": 40},
    }
    assert GeminiGenerateContent().parse(answer) == Reply("A red dress.", 12, 43, "MAX_TOKENS")


def test_anthropic_joins_text_blocks_and_counts_cached_input() -> None:
    answer = {
        "content": [
            {"type": "thinking", "thinking": "…"},
            {"type": "text", "text": "Hi"},
            {"type": "text", "text": "!"},
        ],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 2},
    }
    assert AnthropicMessages().parse(answer) == Reply("Hi!", 105, 2, "max_tokens")


def test_openai_refusal_is_a_content_rejection_and_missing_usage_is_none() -> None:
    refusal = {
        "choices": [{"message": {"content": None, "refusal": "I can't help with that."}, "finish_reason": "stop"}]
    }
    with pytest.raises(ProviderFatalError) as rejected:
        OpenAIChat().parse(refusal)
    assert rejected.value.category == ErrorCategory.CONTENT_REJECTED
    assert OpenAIChat().parse({"choices": [{"message": {"content": "ok"}}]}) == Reply("ok", None, None, None)
    with pytest.raises(RemoteJobFailedError):
        OpenAIChat().parse({"choices": []})


def test_gemini_model_names_are_escaped_in_the_path() -> None:
    conversation = Conversation("models/../../evil?x=1", "p", None, [], None, 0.7)
    assert GeminiGenerateContent().path(conversation) == "v1beta/models/..%2F..%2Fevil%3Fx%3D1:generateContent"
