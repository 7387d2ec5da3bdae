"""The per-process heartbeat hub survives fork: a prefork child gets a fresh lock and its own thread."""

from __future__ import annotations

import os

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
