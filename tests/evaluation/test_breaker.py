"""Circuit breaker transitions and the sliding health window, on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from atelier.evaluation.breaker import BreakerState, CircuitBreaker, CircuitOpenError, EvaluationStats


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: FakeClock, threshold: int = 3, recovery: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker("openai", failure_threshold=threshold, recovery_seconds=recovery, clock=clock)


def state(b: CircuitBreaker) -> BreakerState:
    """The state, read through a call (mypy would otherwise narrow the property between reads)."""
    return b.state


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.acquire()
        b.record_failure()


def test_opens_after_threshold_consecutive_failures_and_refuses_fast() -> None:
    clock = FakeClock()
    b = breaker(clock)
    fail(b, 2)
    assert state(b) is BreakerState.CLOSED
    fail(b, 1)
    assert state(b) is BreakerState.OPEN
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire()
    assert caught.value.http_status == 503 and caught.value.code == "circuit_open"
    assert caught.value.details["provider"] == "openai"
    assert caught.value.details["retry_after_seconds"] == pytest.approx(30.0)


def test_a_success_resets_the_consecutive_count() -> None:
    b = breaker(FakeClock())
    fail(b, 2)
    b.acquire()
    b.record_success()
    fail(b, 2)
    assert state(b) is BreakerState.CLOSED


def test_half_open_after_recovery_admits_one_probe_whose_success_closes() -> None:
    clock = FakeClock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 29.9
    assert state(b) is BreakerState.OPEN
    clock.now += 0.1
    assert state(b) is BreakerState.HALF_OPEN
    b.acquire()  # the probe
    with pytest.raises(CircuitOpenError):
        b.acquire()  # a second caller while the probe runs
    b.record_success()
    assert state(b) is BreakerState.CLOSED
    b.acquire()


def test_failed_probe_reopens_for_a_full_recovery_period() -> None:
    clock = FakeClock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 31
    b.acquire()
    b.record_failure()
    assert state(b) is BreakerState.OPEN
    clock.now += 29
    with pytest.raises(CircuitOpenError):
        b.acquire()
    clock.now += 1
    assert state(b) is BreakerState.HALF_OPEN


def test_released_probe_lets_the_next_caller_probe() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=1)
    fail(b, 1)
    clock.now += 30
    b.acquire()
    b.release()  # the call was refused for bad input: nothing learnt about the backend
    assert state(b) is BreakerState.HALF_OPEN
    b.acquire()
    b.record_success()
    assert state(b) is BreakerState.CLOSED


def test_failure_burst_then_recovery() -> None:
    clock = FakeClock()
    b = breaker(clock, threshold=5, recovery=10)
    refused = 0
    for _ in range(20):
        try:
            b.acquire()
        except CircuitOpenError:
            refused += 1
            continue
        b.record_failure()
    assert refused == 15  # only the first five reached the backend
    clock.now += 10
    b.acquire()
    b.record_success()
    fail(b, 4)
    assert state(b) is BreakerState.CLOSED


def test_stats_window_rate_and_mean() -> None:
    stats = EvaluationStats(window=4)
    empty = stats.summary()
    assert (empty.total, empty.window, empty.success_rate, empty.average_seconds) == (0, 0, 1.0, 0.0)
    for success, seconds in [(False, 9.0), (True, 1.0), (True, 2.0), (False, 3.0), (True, 2.0)]:
        stats.record(success, seconds)
    summary = stats.summary()
    assert summary.total == 5 and summary.window == 4  # the oldest (failed, 9 s) left the window
    assert summary.success_rate == pytest.approx(0.75)
    assert summary.average_seconds == pytest.approx(2.0)
