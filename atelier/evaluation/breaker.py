"""Per-backend circuit breaker and the sliding-window statistics behind ``/evaluation/health``.

Breaker states:

- ``closed``: calls pass; ``failure_threshold`` consecutive failures open it (a success resets the count).
- ``open``: calls are refused at once with :class:`CircuitOpenError` (503) for ``recovery_seconds``.
- ``half_open``: after that delay one probe call passes (others are still refused); its success closes the
  breaker, its failure opens it again for another ``recovery_seconds``.

The clock is injectable (tests drive it without sleeping). Everything is guarded by one lock per object:
evaluations of one backend run in several request threads at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from atelier.core.errors import ServiceUnavailableError

Clock = Callable[[], float]


class BreakerState(StrEnum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(ServiceUnavailableError):
    """The backend failed repeatedly; calls are refused until its breaker lets a probe through."""

    code = "circuit_open"


class CircuitBreaker:
    """Counts consecutive failures of one backend and refuses calls while it is open."""

    def __init__(self, name: str, *, failure_threshold: int, recovery_seconds: float, clock: Clock = time.monotonic):
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker turns half-open once ``recovery_seconds`` have passed)."""
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.recovery_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def acquire(self) -> None:
        """Admit a call, or raise :class:`CircuitOpenError` while open (or while a half-open probe runs)."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return
            wait = self._retry_in()
        raise CircuitOpenError(
            f"evaluation backend {self.name!r} is failing repeatedly; its circuit breaker is open, "
            f"retry in about {wait:.0f}s",
            details={"provider": self.name, "circuit_breaker_state": state.value, "retry_after_seconds": wait},
        )

    def _retry_in(self) -> float:
        assert self._opened_at is not None
        return max(1.0, self.recovery_seconds - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        """A call succeeded: the breaker closes and the failure count restarts."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        """A call failed: a failed probe, or the threshold-th consecutive failure, opens the breaker."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
            self._probing = False

    def release(self) -> None:
        """A call admitted by :meth:`acquire` ended without telling anything about the backend (bad input)."""
        with self._lock:
            self._probing = False


@dataclass(frozen=True)
class Outcome:
    """One finished evaluation."""

    success: bool
    seconds: float


@dataclass(frozen=True)
class WindowSummary:
    """Totals since start-up and figures over the latest evaluations."""

    total: int
    window: int
    success_rate: float
    average_seconds: float


class EvaluationStats:
    """Outcomes of one backend: a total count and the latest ``window`` outcomes."""

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._recent: deque[Outcome] = deque(maxlen=window)

    def record(self, success: bool, seconds: float) -> None:
        """Add one evaluation."""
        with self._lock:
            self._total += 1
            self._recent.append(Outcome(success, seconds))

    def summary(self) -> WindowSummary:
        """Success rate and mean duration over the window (1.0 and 0.0 while nothing has run yet)."""
        with self._lock:
            recent = list(self._recent)
            total = self._total
        if not recent:
            return WindowSummary(total, 0, 1.0, 0.0)
        successes = sum(1 for outcome in recent if outcome.success)
        mean = sum(outcome.seconds for outcome in recent) / len(recent)
        return WindowSummary(total, len(recent), successes / len(recent), mean)
