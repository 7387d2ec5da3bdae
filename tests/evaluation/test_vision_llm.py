"""Vision-LLM backends against the protocol fake: good, fenced, malformed, refused and failing answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from atelier.core.inputs import FetchLimits
from atelier.evaluation.base import BackendUnavailableError, CallContext, MalformedAnswerError, RefusedError
from atelier.evaluation.schemas import AnatomyIssue, EvaluationProvider, Framing, Gender, ViewAngle
from atelier.evaluation.vision_llm import VisionLLMBackend, answer_schema, parse_answer, vision_backends
from atelier.settings import EvaluationSettings, ProviderSettings, Settings
from atelier.storage.backend import LocalStorage
from atelier.storage.service import TenantStorage
from tests.evaluation.conftest import llm_providers, request
from tests.fakes.vision_llm import GOOD_ANSWER, VisionLLMFake

IMAGE = Image.new("RGB", (96, 64), "teal")


@pytest.fixture
def call(tmp_path: Path) -> Iterator[CallContext]:
    with httpx.Client() as http:
        yield CallContext(http, FetchLimits(), TenantStorage(LocalStorage(tmp_path), "acme"))


def backends(fake: VisionLLMFake, **evaluation: Any) -> dict[EvaluationProvider, VisionLLMBackend]:
    settings = EvaluationSettings(**evaluation)
    providers = ProviderSettings(**llm_providers(fake.base_url))
    return {backend.provider: backend for backend in vision_backends(providers, settings)}


@pytest.mark.parametrize("provider", [EvaluationProvider.OPENAI, EvaluationProvider.GEMINI, EvaluationProvider.VERTEX])
def test_good_answer_fills_every_field(vision: VisionLLMFake, call: CallContext, provider: EvaluationProvider) -> None:
    result = backends(vision)[provider].evaluate(IMAGE, request(include_descriptions=True), call)
    assert result.success is True
    assert result.detected_framing is Framing.FULL_BODY and result.detected_view_angle is ViewAngle.FRONT
    assert result.human_detected is True and result.number_of_people == 1
    assert result.anatomy_correct is False and result.anatomy_issues == [AnatomyIssue.EXTRA_FINGERS]
    assert result.detected_gender is Gender.FEMALE and result.gender_confidence == 0.95
    assert result.collage_detected is False
    assert result.garment_description == "A red knee-length dress."
    [sent] = vision.calls
    assert sent.vendor == provider.value
    assert "authorization" not in json.dumps(sent.body).lower()  # credentials travel in headers only


def test_openai_request_asks_for_the_strict_schema_and_sends_the_image_inline(
    vision: VisionLLMFake, call: CallContext
) -> None:
    backends(vision)[EvaluationProvider.OPENAI].evaluate(IMAGE, request(custom_instructions="check the hem"), call)
    body = vision.calls[0].body
    fmt = body["response_format"]["json_schema"]
    assert fmt["strict"] is True and fmt["schema"] == answer_schema()
    assert set(fmt["schema"]["required"]) == set(GOOD_ANSWER)
    user = body["messages"][-1]["content"]
    assert user[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "check the hem" in user[0]["text"]
    assert "full_body" not in user[0]["text"]  # the expected shot type is not revealed to the model


def test_descriptions_are_dropped_unless_requested(vision: VisionLLMFake, call: CallContext) -> None:
    result = backends(vision)[EvaluationProvider.GEMINI].evaluate(IMAGE, request(), call)
    assert result.garment_description is None and result.subject_description is None
    assert result.scene_description is None
    system = vision.calls[0].body["systemInstruction"]["parts"][0]["text"]
    assert "always null (not requested)" in system


def test_fenced_json_is_accepted(vision: VisionLLMFake, call: CallContext) -> None:
    vision.script[:] = ["fenced"]
    assert backends(vision)[EvaluationProvider.OPENAI].evaluate(IMAGE, request(), call).success


@pytest.mark.parametrize("bad", ["prose", "wrong_enum", "missing", "empty"])
def test_malformed_answer_is_retried_once_then_succeeds(vision: VisionLLMFake, call: CallContext, bad: str) -> None:
    vision.script[:] = [bad, "ok"]
    result = backends(vision, llm_attempts=2)[EvaluationProvider.OPENAI].evaluate(IMAGE, request(), call)
    assert result.success and len(vision.calls) == 2


def test_malformed_answers_past_the_bound_raise(vision: VisionLLMFake, call: CallContext) -> None:
    vision.script[:] = ["wrong_enum", "prose", "wrong_enum", "ok"]
    backend = backends(vision, llm_attempts=3)[EvaluationProvider.GEMINI]
    with pytest.raises(MalformedAnswerError, match="after 3 tries"):
        backend.evaluate(IMAGE, request(), call)
    assert len(vision.calls) == 3


def test_refusal_is_reported_not_retried(vision: VisionLLMFake, call: CallContext) -> None:
    vision.script[:] = ["refused"]
    with pytest.raises(RefusedError):
        backends(vision)[EvaluationProvider.OPENAI].evaluate(IMAGE, request(), call)
    assert len(vision.calls) == 1


@pytest.mark.parametrize("failure", ["500", "429"])
def test_server_failures_are_backend_unavailable(vision: VisionLLMFake, call: CallContext, failure: str) -> None:
    vision.script[:] = [failure]
    with pytest.raises(BackendUnavailableError) as caught:
        backends(vision)[EvaluationProvider.VERTEX].evaluate(IMAGE, request(), call)
    assert caught.value.http_status == 503 and caught.value.details == {"provider": "vertex"}


def test_wrong_key_is_backend_unavailable(vision: VisionLLMFake, call: CallContext) -> None:
    settings = EvaluationSettings()
    providers = ProviderSettings(openai={"base_url": vision.base_url, "api_key": "sk-wrong", "call_attempts": 1})
    backend = {b.provider: b for b in vision_backends(providers, settings)}[EvaluationProvider.OPENAI]
    with pytest.raises(BackendUnavailableError, match="credentials rejected"):
        backend.evaluate(IMAGE, request(), call)


def test_unconfigured_backends_say_what_to_set() -> None:
    found = {b.provider: b for b in vision_backends(ProviderSettings(), EvaluationSettings())}
    assert "ATELIER_PROVIDERS__OPENAI__API_KEY" in (found[EvaluationProvider.OPENAI].unavailable_reason() or "")
    assert "ATELIER_PROVIDERS__VERTEX__CREDENTIALS_FILE" in (
        found[EvaluationProvider.VERTEX].unavailable_reason() or ""
    )
    assert found[EvaluationProvider.OLLAMA].unavailable_reason() is None  # a local server needs no key


def test_parse_answer_validates_ranges() -> None:
    assert parse_answer(json.dumps(GOOD_ANSWER)).framing is Framing.FULL_BODY
    with pytest.raises(ValueError, match="less than or equal to 1"):
        parse_answer(json.dumps({**GOOD_ANSWER, "gender_confidence": 1.5}))


def test_model_setting_reaches_the_request_and_keeps_the_other_defaults(
    vision: VisionLLMFake, call: CallContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_EVALUATION__MODELS__OPENAI", "gpt-4.1-mini")
    settings = Settings().evaluation
    assert settings.models.gemini == "gemini-2.5-flash"
    providers = ProviderSettings(**llm_providers(vision.base_url))
    backend = {b.provider: b for b in vision_backends(providers, settings)}[EvaluationProvider.OPENAI]
    backend.evaluate(IMAGE, request(), call)
    assert vision.calls[0].body["model"] == "gpt-4.1-mini"
