"""kombu's Redis transport, with channels that fail like a lost connection once their connection is closed.

When a Redis broker goes away, Celery closes the broken connection and opens a new one. With kombu 5.7 the old
connection's channel is still used after its transport has been detached (``Transport.client`` is ``None``):
``Channel.close`` restores unacked messages, and a task that finishes later acks its message through the same
channel. Both create a Redis client from ``_connparams``, which then raises ``AttributeError: 'NoneType' object
has no attribute 'hostname'``. That is not one of the transport's connection errors, so Celery treats it as
unrecoverable and the worker exits: a Redis restart took every worker that held a message with it.

Here such a channel raises redis' ``ConnectionError`` instead, the error it stands for: Celery logs the failed
restore or ack and reconnects. The message is recovered the way any lost message is: the task's PENDING row
has no live message, or its lease expires, and the reaper republishes it (ARCHITECTURE.md, "Leases and the
reaper"); the claim drops a duplicate.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection this channel belonged to was closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]  # not in the stubs
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel
