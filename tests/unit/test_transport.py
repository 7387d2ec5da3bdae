"""The embedded in-process transport: priorities and isolation between virtual hosts."""

from __future__ import annotations

import uuid

from kombu import Connection, Queue

from atelier.engine import transport


def _connection(vhost: str) -> Connection:
    transport.register()
    return Connection(f"{transport.SCHEME}://localhost/{vhost}")


def _drain(conn: Connection, queue: str, n: int) -> list[str]:
    out: list[str] = []
    with conn.SimpleQueue(queue) as q:
        for _ in range(n):
            message = q.get(timeout=1)
            out.append(message.payload)
            message.ack()
    return out


def test_higher_priority_first_then_fifo() -> None:
    vhost = uuid.uuid4().hex
    with _connection(vhost) as conn:
        producer = conn.Producer()
        q = Queue("work", routing_key="work")
        for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5)]:
            producer.publish(name, routing_key="work", declare=[q], priority=priority)
        assert _drain(conn, "work", 5) == ["d", "b", "e", "a", "c"]
    transport.purge_vhost(vhost)


def test_virtual_hosts_do_not_share_queues() -> None:
    one, two = uuid.uuid4().hex, uuid.uuid4().hex
    with _connection(one) as c1, _connection(two) as c2:
        q = Queue("work", routing_key="work")
        c1.Producer().publish("for-one", routing_key="work", declare=[q])
        c2.Producer().publish("for-two", routing_key="work", declare=[q])
        assert _drain(c2, "work", 1) == ["for-two"]
        assert _drain(c1, "work", 1) == ["for-one"]
    transport.purge_vhost(one)
    transport.purge_vhost(two)
