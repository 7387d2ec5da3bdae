"""The per-process heartbeat hub: it survives fork, and its thread is woken only for a beat due sooner."""

from __future__ import annotations

import math
import os
import threading
import time

from atelier.tasks import execution


def test_forked_child_gets_a_fresh_hub_even_if_the_lock_was_held() -> None:
    hub = execution._HEARTBEATS
    with hub._lock:  # as if the parent's heartbeat thread held it at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: the lock must be free and the thread not yet started
            fresh = hub._lock.acquire(timeout=2) and hub._pid is None
            os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _CountingProbe:
    def __init__(self) -> None:
        self.beats = threading.Event()
        self.task_id = "probe"

    def beat(self) -> None:
        self.beats.set()


def test_a_beat_due_before_the_threads_planned_wake_up_still_wakes_it() -> None:
    hub = execution._Heartbeats()
    slow, fast = _CountingProbe(), _CountingProbe()
    slow_key = hub.add(slow, 3600.0)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while hub._sleeping_until == -math.inf and time.monotonic() < deadline:  # the thread plans an hour's sleep
        time.sleep(0.01)
    assert hub._sleeping_until > time.monotonic() + 3000
    fast_key = hub.add(fast, 0.05)  # type: ignore[arg-type]
    assert fast.beats.wait(5), "the sleeping thread was not woken for the earlier beat"
    assert not slow.beats.is_set()
    hub.remove(slow_key)
    hub.remove(fast_key)


def test_beats_due_after_the_planned_wake_up_are_kept_without_waking_the_thread() -> None:
    hub = execution._Heartbeats()
    first, second = _CountingProbe(), _CountingProbe()
    keys = [hub.add(first, 0.2)]  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while hub._sleeping_until == -math.inf and time.monotonic() < deadline:
        time.sleep(0.01)
    keys.append(hub.add(second, 0.4))  # type: ignore[arg-type]
    assert first.beats.wait(5) and second.beats.wait(5)
    for key in keys:
        hub.remove(key)
