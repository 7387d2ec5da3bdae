"""Atelier's Redis transport: a channel of a closed connection fails like a lost connection, never AttributeError.

With kombu's own transport, restoring unacked messages (or acking one) through the channel of a connection that
Celery has already torn down raised ``AttributeError`` from ``_connparams``, which Celery treats as unrecoverable:
a Redis restart killed the workers. The chaos suite proves the whole recovery; this pins the transport's part.
"""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection
from kombu.transport.redis import Transport as KombuRedisTransport
from redis.exceptions import ConnectionError as RedisConnectionError

from atelier.engine import transport
from atelier.engine.redis_transport import Transport
from tests.distributed.services import redis_prefix

pytestmark = pytest.mark.integration


def test_redis_urls_resolve_to_atelier_transport() -> None:
    transport.register()
    connection = Connection("redis://127.0.0.1:6379/0")
    assert type(connection.transport) is Transport
    assert issubclass(Transport, KombuRedisTransport)


def test_a_detached_channel_raises_a_connection_error() -> None:
    transport.register()
    with redis_prefix() as (url, prefix):
        connection = Connection(url, transport_options={"global_keyprefix": prefix})
        channel: Any = connection.channel()  # kombu's redis Channel (the stubs only know StdChannel)
        queue = connection.SimpleQueue(f"{prefix}q", channel=channel)
        queue.put({"n": 1})
        message = queue.get(timeout=5)  # delivered and unacked: the channel's QoS holds it
        assert channel.qos._delivered

        # The state Celery leaves a broken connection in: the transport detached, its channel still open.
        connection._do_close_transport()
        with pytest.raises(connection.connection_errors) as raised:  # closing restores the unacked message
            channel.close()
        assert isinstance(raised.value, RedisConnectionError)
        with pytest.raises(connection.connection_errors) as raised:  # a task that finishes later acks it
            message.ack()
        assert isinstance(raised.value, RedisConnectionError)
