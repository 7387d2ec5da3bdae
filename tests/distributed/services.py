"""Real PostgreSQL, Redis and RabbitMQ for the distributed tests: one database / key prefix per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import redis
from kombu import Connection

PG_ADMIN = os.environ.get("ATELIER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ATELIER_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBIT_URL = os.environ.get("ATELIER_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")


def unavailable(what: str, exc: Exception) -> None:
    """Fail in CI (the servers must be there), skip with the reason elsewhere."""
    message = f"{what} is not reachable ({exc}); integration tests need it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database; dropped afterwards. Yields its SQLAlchemy URL."""
    name = f"atelier_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", exc)
        raise
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_prefix() -> Iterator[tuple[str, str]]:
    """(broker URL, key prefix) on the machine's Redis; every key with the prefix is deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    try:
        yield REDIS_URL, prefix
    finally:
        flush_redis_prefix(prefix)
        client.close()


def flush_redis_prefix(prefix: str) -> int:
    """Delete every Redis key of a test (what losing the broker's queues looks like)."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


@contextmanager
def rabbit_prefix(queue_names: list[str]) -> Iterator[tuple[str, str]]:
    """(broker URL, queue prefix) on the machine's RabbitMQ; the prefixed queues are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    try:
        with Connection(RABBIT_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable("RabbitMQ", exc)
    try:
        yield RABBIT_URL, prefix
    finally:
        with Connection(RABBIT_URL) as conn:
            channel: Any = conn.channel()
            for name in queue_names:
                try:
                    channel.queue_delete(prefix + name)
                except Exception:  # a queue never declared by this test
                    channel = conn.channel()
