"""In-process kombu transport for the embedded default: thread-safe, isolated per virtual host, with priorities.

kombu's ``memory://`` keeps one queue table for the whole process and ignores message priority. Embedded
Atelier needs both: isolation (several apps in one process, e.g. tests) and ``priority`` ordering. Messages
are exchanged between threads of one process only; the database remains the source of truth, so what this
transport holds at a crash is re-published from the task rows on the next start.
"""

from __future__ import annotations

import itertools
import threading
from queue import PriorityQueue
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, base, virtual

SCHEME = "atelier-memory"

_registry_lock = threading.Lock()
_registry: dict[str, dict[str, PriorityQueue[tuple[int, int, Any]]]] = {}
_sequence = itertools.count()


def _queues_for(vhost: str) -> dict[str, PriorityQueue[tuple[int, int, Any]]]:
    with _registry_lock:
        return _registry.setdefault(vhost, {})


def purge_vhost(vhost: str) -> None:
    """Forget every queue of ``vhost`` (used when an embedded app shuts down)."""
    with _registry_lock:
        _registry.pop(vhost, None)


class Channel(virtual.Channel):
    """Channel whose queues are priority queues scoped to the connection's virtual host."""

    do_restore = False
    supports_fanout = True

    @property
    def _queues(self) -> dict[str, PriorityQueue[tuple[int, int, Any]]]:
        client = self.connection.client if self.connection is not None else None
        return _queues_for(str(getattr(client, "virtual_host", None) or "/"))

    def _queue_for(self, queue: str) -> PriorityQueue[tuple[int, int, Any]]:
        queues = self._queues
        with _registry_lock:
            if queue not in queues:
                queues[queue] = PriorityQueue()
            return queues[queue]

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return queue in self._queues

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._queue_for(queue)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        return self._queue_for(queue).get(block=False)[2]

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # Higher priority first; FIFO within one priority.
        self._queue_for(queue).put((-self._get_message_priority(message), next(_sequence), message))

    def _put_fanout(self, exchange: str, message: Any, routing_key: str | None = None, **kwargs: Any) -> None:
        for queue in self._lookup(exchange, routing_key or ""):
            self._put(queue, message)

    def _queue_bind(self, *args: Any) -> None:
        pass

    def _size(self, queue: str) -> int:
        return self._queue_for(queue).qsize()

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with _registry_lock:
            self._queues.pop(queue, None)

    def _purge(self, queue: str) -> int:
        q = self._queue_for(queue)
        with q.mutex:
            size = len(q.queue)
            q.queue.clear()
        return size

    def after_reply_message_received(self, queue: str) -> None:
        pass


class Transport(virtual.Transport):
    """The embedded transport (``atelier-memory://localhost/<vhost>``)."""

    Channel = Channel
    implements = base.Transport.implements
    driver_type = "memory"
    driver_name = "atelier-memory"

    _states: dict[str, virtual.BrokerState] = {}

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        vhost = str(client.virtual_host or "/")
        with _registry_lock:
            self.state = self._states.setdefault(vhost, virtual.BrokerState())

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> None:
        """Wait at most 0.1 s per call: Celery's loop re-checks for shutdown between calls (it asks for 2 s)."""
        super().drain_events(connection, timeout=min(timeout, 0.1) if timeout is not None else None)

    def driver_version(self) -> str:
        """No driver library behind this transport."""
        return "N/A"


def register() -> None:
    """Make ``atelier-memory://`` resolvable by kombu, and ``redis://`` use Atelier's Redis transport (idempotent).

    The Redis transport is kombu's with one fix (``atelier/engine/redis_transport.py``); it applies to every kombu
    connection in the process, the API's publisher and the workers' consumers alike.
    """
    TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = "atelier.engine.redis_transport:Transport"
