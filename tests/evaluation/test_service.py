"""The ShotEvaluator: scoring rules, breaker wiring and health, with scripted backends and injected clocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits
from atelier.evaluation.base import BackendUnavailableError, CallContext, MalformedAnswerError, RefusedError
from atelier.evaluation.breaker import CircuitOpenError
from atelier.evaluation.schemas import EvaluationProvider, EvaluationRequest, EvaluationResponse, Framing, ViewAngle
from atelier.evaluation.service import ShotEvaluator, confidence_summary, matches_expected
from atelier.settings import EvaluationSettings
from atelier.storage.backend import LocalStorage
from atelier.storage.service import TenantStorage
from tests.conftest import data_url
from tests.evaluation.conftest import request


class ScriptedBackend:
    """A backend answering from a script of results and exceptions."""

    def __init__(self, provider: EvaluationProvider = EvaluationProvider.OPENAI) -> None:
        self.provider = provider
        self.script: list[EvaluationResponse | Exception] = []
        self.images: list[Image.Image] = []
        self.reason: str | None = None

    def unavailable_reason(self) -> str | None:
        return self.reason

    def evaluate(self, image: Image.Image, request: EvaluationRequest, call: CallContext) -> EvaluationResponse:
        self.images.append(image)
        step = self.script.pop(0) if self.script else EvaluationResponse(success=True)
        if isinstance(step, Exception):
            raise step
        return step


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Timer(Clock):
    """Each reading advances by ``step`` seconds: an evaluation (two readings apart) seems to take ``step``."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def call(tmp_path: Path) -> Iterator[CallContext]:
    with httpx.Client() as http:
        yield CallContext(http, FetchLimits(), TenantStorage(LocalStorage(tmp_path), "acme"))


def evaluator(backend: ScriptedBackend, clock: Clock | None = None, **settings: object) -> ShotEvaluator:
    values: dict[str, object] = {"default_provider": "openai", "failure_threshold": 3, "recovery_seconds": 30.0}
    values.update(settings)
    return ShotEvaluator(EvaluationSettings(**values), [backend], clock=clock or Clock(), timer=Timer(0.25))


def img_request(**overrides: object) -> EvaluationRequest:
    return request(image_data=data_url((64, 48), "red"), **overrides)


def detected(framing: Framing | None, view: ViewAngle | None, **extra: object) -> EvaluationResponse:
    return EvaluationResponse(success=True, detected_framing=framing, detected_view_angle=view, **extra)


@pytest.mark.parametrize(
    ("framing", "view", "expected"),
    [
        (Framing.FULL_BODY, ViewAngle.FRONT, True),
        (Framing.CLOSE_UP, ViewAngle.FRONT, False),
        (Framing.FULL_BODY, ViewAngle.BACK, False),
        (Framing.CLOSE_UP, None, False),  # one known part differs: it cannot match whatever the other is
        (Framing.FULL_BODY, None, None),  # the view could still differ
        (None, None, None),
    ],
)
def test_matches_expected(framing: Framing | None, view: ViewAngle | None, expected: bool | None) -> None:
    assert matches_expected(detected(framing, view), request()) is expected


def test_confidence_summary_is_the_mean_of_reported_confidences() -> None:
    result = detected(None, None, shot_type_confidence=0.5, human_presence_confidence=0.9, gender_confidence=0.4)
    assert confidence_summary(result) == pytest.approx(0.6)
    assert confidence_summary(detected(None, None)) is None


def test_result_is_completed_with_computed_fields(call: CallContext) -> None:
    backend = ScriptedBackend()
    backend.script = [detected(Framing.FULL_BODY, ViewAngle.FRONT, shot_type_confidence=0.8)]
    result = evaluator(backend).evaluate(img_request(), None, call)
    assert result.matches_expected is True and result.confidence_summary == pytest.approx(0.8)
    assert result.evaluation_time_ms == pytest.approx(250.0)
    assert backend.images[0].size == (64, 48) and backend.images[0].mode == "RGB"


def test_image_is_bounded_before_the_backend_sees_it(call: CallContext) -> None:
    backend = ScriptedBackend()
    evaluator(backend, max_side=128).evaluate(request(image_data=data_url((600, 300))), None, call)
    assert backend.images[0].size == (128, 64)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, "image_data"),
        ({"image_data": data_url(), "image_url": "https://example.com/a.png"}, "image_data"),
        ({"image_data": "data:image/png;base64,@@@"}, "image_data"),
        ({"image_url": "http://169.254.169.254/latest/meta-data"}, "image_url"),
        ({"image_data": data_url(), "custom_instructions": "x" * 11}, "custom_instructions"),
    ],
)
def test_input_errors_do_not_touch_the_backend_or_the_breaker(
    call: CallContext, body: dict[str, str], loc: str
) -> None:
    backend = ScriptedBackend()
    service = evaluator(backend, custom_instructions_max_chars=10, failure_threshold=1)
    for _ in range(3):
        with pytest.raises(InvalidInputError) as caught:
            service.evaluate(request(**body), None, call)
        assert caught.value.loc[-1] == loc
    assert backend.images == []
    health = service.health(None)
    assert health.circuit_breaker_state == "closed" and health.total_evaluations == 0


def test_malformed_answer_is_success_false_and_a_breaker_failure(call: CallContext) -> None:
    backend = ScriptedBackend()
    backend.script = [MalformedAnswerError("openai: not JSON after 2 tries")] * 3
    service = evaluator(backend)
    for _ in range(3):
        result = service.evaluate(img_request(), None, call)
        assert result.success is False and result.error == "openai: not JSON after 2 tries"
        assert result.matches_expected is None and result.evaluation_time_ms is not None
    with pytest.raises(CircuitOpenError):
        service.evaluate(img_request(), None, call)


def test_refusal_is_success_false_but_keeps_the_breaker_closed(call: CallContext) -> None:
    backend = ScriptedBackend()
    backend.script = [RefusedError("the model refused")] * 5
    service = evaluator(backend)
    for _ in range(5):
        assert service.evaluate(img_request(), None, call).success is False
    assert service.health(None).circuit_breaker_state == "closed"


def test_failure_burst_opens_the_breaker_then_a_probe_closes_it(call: CallContext) -> None:
    clock = Clock()
    backend = ScriptedBackend()
    backend.script = [BackendUnavailableError("openai: HTTP 500")] * 3
    service = evaluator(backend, clock)
    for _ in range(3):
        with pytest.raises(BackendUnavailableError):
            service.evaluate(img_request(), None, call)
    calls = len(backend.images)
    with pytest.raises(CircuitOpenError):
        service.evaluate(img_request(), None, call)
    assert len(backend.images) == calls  # refused before the backend (and before the image was decoded)
    health = service.health(None)
    assert health.circuit_breaker_state == "open" and not health.is_healthy and health.health_score == 0.0
    assert health.total_evaluations == 3 and health.success_rate == 0.0
    clock.now += 30
    assert service.health(None).circuit_breaker_state == "half_open"
    assert service.evaluate(img_request(), None, call).success
    assert service.health(None).circuit_breaker_state == "closed"


def test_health_reports_window_rate_latency_and_score(call: CallContext) -> None:
    backend = ScriptedBackend()
    backend.script = [BackendUnavailableError("boom"), EvaluationResponse(success=True)]
    service = evaluator(backend, health_window=10, healthy_success_rate=0.5)
    with pytest.raises(BackendUnavailableError):
        service.evaluate(img_request(), None, call)
    service.evaluate(img_request(), None, call)
    health = service.health(EvaluationProvider.OPENAI)
    assert health.total_evaluations == 2 and health.success_rate == 0.5
    assert health.average_response_time == pytest.approx(0.25)
    assert health.is_healthy is True and health.health_score == 0.5


def test_unconfigured_backend_is_503_and_unhealthy(call: CallContext) -> None:
    backend = ScriptedBackend()
    backend.reason = "no API key configured"
    service = evaluator(backend)
    with pytest.raises(BackendUnavailableError, match="no API key configured"):
        service.evaluate(img_request(), None, call)
    health = service.health(None)
    assert health.is_healthy is False and health.health_score == 0.0 and health.circuit_breaker_state == "closed"


def test_unknown_backend_is_503(call: CallContext) -> None:
    with pytest.raises(BackendUnavailableError, match="not installed"):
        evaluator(ScriptedBackend()).evaluate(img_request(), EvaluationProvider.LOCAL, call)
