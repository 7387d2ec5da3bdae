"""The ShotEvaluator: picks a backend, guards it with its circuit breaker, loads the image, times and scores.

Order of one evaluation: the request's own checks (422), the backend's configuration (503), the breaker (fast
503 while open), the image (SSRF-checked fetch or base64, size and pixel limits: 4xx, which say nothing about the
backend and release a half-open probe), then the backend. Backend outcomes:

- a result: the breaker records a success;
- :class:`MalformedAnswerError`: ``success=false`` with ``error``; the breaker records a failure;
- :class:`RefusedError` (the model declined this image): ``success=false``; the backend itself works;
- :class:`BackendUnavailableError` or anything unexpected: the breaker records a failure and the error propagates.

``matches_expected`` is False as soon as one detected part of the shot type (framing, view angle) differs from the
expected one, True when both were detected and match, else None. ``confidence_summary`` is the mean of the
confidences the backend reported. ``evaluation_time_ms`` covers the backend's work on the decoded image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from statistics import fmean

from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import decode_base64_payload, fetch_url, open_image
from atelier.evaluation.base import (
    BackendUnavailableError,
    CallContext,
    EvaluationBackend,
    MalformedAnswerError,
    RefusedError,
)
from atelier.evaluation.breaker import BreakerState, CircuitBreaker, Clock, EvaluationStats
from atelier.evaluation.local import LocalBackend
from atelier.evaluation.schemas import (
    CONFIDENCE_FIELDS,
    EvaluationProvider,
    EvaluationRequest,
    EvaluationResponse,
    HealthStatus,
)
from atelier.evaluation.vision_llm import vision_backends
from atelier.settings import EvaluationSettings, Settings

STATE_FACTOR = {BreakerState.CLOSED: 1.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 0.0}


def load_image(request: EvaluationRequest, call: CallContext, max_side: int) -> Image.Image:
    """The request's image, decoded within the input limits, as RGB no larger than ``max_side``."""
    if (request.image_data is None) == (request.image_url is None):
        raise InvalidInputError("give exactly one of image_data or image_url", loc=("body", "image_data"))
    limits = call.fetch_limits
    if request.image_data is not None:
        loc: tuple[str, ...] = ("body", "image_data")
        data = decode_base64_payload(request.image_data, limits=limits, loc=loc)
    else:
        loc = ("body", "image_url")
        data = fetch_url(str(request.image_url), limits=limits, client=call.http, loc=loc)
    image = open_image(data, limits=limits, loc=loc, draft=lambda _w, _h: (max_side, max_side)).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def matches_expected(result: EvaluationResponse, request: EvaluationRequest) -> bool | None:
    """Whether the detected shot type is the expected one (None when it cannot be told)."""
    framing, view = result.detected_framing, result.detected_view_angle
    if (framing is not None and framing != request.expected_framing) or (
        view is not None and view != request.expected_view_angle
    ):
        return False
    return True if framing is not None and view is not None else None


def confidence_summary(result: EvaluationResponse) -> float | None:
    """Mean of the confidences the backend reported."""
    values = [value for name in CONFIDENCE_FIELDS if (value := getattr(result, name)) is not None]
    return round(fmean(values), 4) if values else None


class ShotEvaluator:
    """Every backend of this process, each with its circuit breaker and its statistics."""

    def __init__(
        self,
        settings: EvaluationSettings,
        backends: Iterable[EvaluationBackend],
        *,
        clock: Clock = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        self._timer = timer
        self._backends = {backend.provider: backend for backend in backends}
        self._breakers = {
            name: CircuitBreaker(
                name.value,
                failure_threshold=settings.failure_threshold,
                recovery_seconds=settings.recovery_seconds,
                clock=clock,
            )
            for name in self._backends
        }
        self._stats = {name: EvaluationStats(settings.health_window) for name in self._backends}

    @classmethod
    def from_settings(cls, settings: Settings) -> ShotEvaluator:
        """The local backend and every vision-LLM backend, connected as ``settings`` says."""
        backends: list[EvaluationBackend] = [LocalBackend(), *vision_backends(settings.providers, settings.evaluation)]
        return cls(settings.evaluation, backends)

    def resolve(self, provider: EvaluationProvider | None) -> EvaluationProvider:
        """The backend a request means: the one it names, else the configured default."""
        name = provider or EvaluationProvider(self.settings.default_provider)
        if name not in self._backends:
            raise BackendUnavailableError(f"evaluation backend {name.value!r} is not installed")
        return name

    def breaker(self, provider: EvaluationProvider) -> CircuitBreaker:
        """The circuit breaker of one backend."""
        return self._breakers[provider]

    def evaluate(
        self, request: EvaluationRequest, provider: EvaluationProvider | None, call: CallContext
    ) -> EvaluationResponse:
        """Evaluate the request's image with the chosen backend (see the module doc for the order of checks)."""
        name = self.resolve(provider)
        self._check(request)
        backend = self._backends[name]
        reason = backend.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"evaluation backend {name.value!r} is not available: {reason}")
        breaker = self._breakers[name]
        breaker.acquire()
        try:
            image = load_image(request, call, self.settings.max_side)
        except BaseException:
            breaker.release()
            raise
        started = self._timer()
        result = self._run(backend, breaker, image, request, call, started)
        elapsed = self._timer() - started
        self._stats[name].record(result.success, elapsed)
        return result.model_copy(
            update={
                "matches_expected": matches_expected(result, request) if result.success else None,
                "confidence_summary": confidence_summary(result) if result.success else None,
                "evaluation_time_ms": round(elapsed * 1000, 3),
            }
        )

    def _check(self, request: EvaluationRequest) -> None:
        limit = self.settings.custom_instructions_max_chars
        if request.custom_instructions is not None and len(request.custom_instructions) > limit:
            raise InvalidInputError(
                f"custom_instructions is longer than {limit} characters", loc=("body", "custom_instructions")
            )

    def _run(
        self,
        backend: EvaluationBackend,
        breaker: CircuitBreaker,
        image: Image.Image,
        request: EvaluationRequest,
        call: CallContext,
        started: float,
    ) -> EvaluationResponse:
        try:
            result = backend.evaluate(image, request, call)
        except MalformedAnswerError as exc:
            breaker.record_failure()
            return EvaluationResponse(success=False, error=str(exc))
        except RefusedError as exc:
            breaker.record_success()
            return EvaluationResponse(success=False, error=str(exc))
        except BaseException:
            breaker.record_failure()
            self._stats[backend.provider].record(False, self._timer() - started)
            raise
        breaker.record_success()
        return result

    def health(self, provider: EvaluationProvider | None) -> HealthStatus:
        """Breaker state, windowed success rate and latency, and a score combining them."""
        name = self.resolve(provider)
        state = self._breakers[name].state
        summary = self._stats[name].summary()
        configured = self._backends[name].unavailable_reason() is None
        score = summary.success_rate * STATE_FACTOR[state] if configured else 0.0
        healthy = configured and state is not BreakerState.OPEN
        return HealthStatus(
            is_healthy=healthy and summary.success_rate >= self.settings.healthy_success_rate,
            health_score=round(score, 4),
            total_evaluations=summary.total,
            success_rate=round(summary.success_rate, 4),
            average_response_time=round(summary.average_seconds, 6),
            circuit_breaker_state=state.value,
        )
