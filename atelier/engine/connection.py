"""The broker connection of Atelier's Celery apps: reconnects every second, not after ever longer waits.

Celery's worker reconnects to a lost broker through ``Connection.ensure_connection`` with kombu's default
intervals (2 s, then 4, 6, 8 … up to 30 s). A broker that takes a few seconds to come back (RabbitMQ starts in
3-6 s) was then found only at the next attempt, up to 8 s later. Retrying every second keeps "the service is back
within seconds of the broker" true; an attempt on an unreachable broker costs one refused TCP connection.
"""

from __future__ import annotations

from typing import Any

from celery.app import amqp as celery_amqp
from kombu import Connection as KombuConnection

RECONNECT_INTERVAL_SECONDS = 1.0


class Connection(KombuConnection):
    def ensure_connection(self, *args: Any, **kwargs: Any) -> Connection:
        kwargs.setdefault("interval_start", RECONNECT_INTERVAL_SECONDS)
        kwargs.setdefault("interval_step", 0)
        kwargs.setdefault("interval_max", RECONNECT_INTERVAL_SECONDS)
        super().ensure_connection(*args, **kwargs)
        return self


class AMQP(celery_amqp.AMQP):
    """``Celery(amqp=…)``: the app's connections are :class:`Connection`."""

    Connection = Connection
