"""Background loops: a daemon thread that runs one function every ``interval`` seconds or when woken, and an
in-process signal to wake such loops (e.g. "a webhook event was committed")."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicThread:
    """Run ``work`` every ``interval`` seconds, or at once after ``wake()``; an exception is logged and the next
    round runs anyway."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the rounds."""
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now (or right after the current one)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current round."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.work()
            except Exception:  # an outage must not kill the loop; the next round retries
                log.warning("%s: round failed", self.name, exc_info=True)


class Signal:
    """Callbacks to run when something happened in this process (firing never raises)."""

    def __init__(self) -> None:
        self._subscribers: set[Callable[[], None]] = set()
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every ``fire``."""
        with self._lock:
            self._subscribers.add(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._subscribers.discard(callback)

    def fire(self) -> None:
        """Call every subscriber."""
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback()
            except Exception:  # a subscriber's failure is its own
                log.warning("signal subscriber failed", exc_info=True)
