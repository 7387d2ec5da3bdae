"""Sending deliveries: claim what is due, POST it signed, record the attempt, schedule the retry.

Deliveries of one target (task or workflow) go out one at a time in id order: a delivery is due only when no
earlier delivery of its target is still PENDING, so a receiver sees a task's events in the order they happened.
A claim is a lease (``lease_until``) taken in one short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several API processes share the work); the HTTP call runs outside any transaction. A process that dies
mid-send leaves the lease to expire and the delivery is sent again — receivers dedupe on ``webhook-id``,
which is the same for every attempt of a delivery.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import aliased

from atelier import __version__
from atelier.core.db import session_scope
from atelier.core.errors import InvalidInputError, UnsafeURLError
from atelier.core.inputs import FetchLimits, check_url
from atelier.core.periodic import PeriodicThread
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.delivery.models import WebhookAttempt, WebhookDelivery
from atelier.delivery.outbox import DELIVERED, FAILED, PENDING, relay
from atelier.delivery.signing import key_bytes, secrets_of, signature_header
from atelier.monitoring import metrics
from atelier.settings import WebhookSettings
from atelier.tasks.transitions import WEBHOOK_COMMITTED

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 30.0
EXCERPT = 512
D = WebhookDelivery


@dataclass(frozen=True)
class Claimed:
    """A delivery this process is sending (attempt number ``attempt``)."""

    id: int
    webhook_id: str
    url: str
    payload: dict[str, Any]
    attempt: int


@dataclass(frozen=True)
class AttemptResult:
    """What one POST produced."""

    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    permanent: bool = False  # never retry (blocked URL, receiver answered 410 Gone)
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def claim_due(runtime: Runtime, limit: int) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (each the oldest PENDING one of its target)."""
    settings = runtime.settings.webhooks
    now = utcnow()
    lease = now + timedelta(seconds=settings.timeout_seconds + LEASE_MARGIN_SECONDS)
    earlier = aliased(WebhookDelivery)
    blocked = select(earlier.id).where(earlier.target == D.target, earlier.state == PENDING, earlier.id < D.id)
    due = (
        select(D.id)
        .where(
            D.state == PENDING,
            D.next_attempt_at <= now,
            or_(D.lease_until.is_(None), D.lease_until < now),
            ~blocked.exists(),
        )
        .order_by(D.next_attempt_at, D.id)
        .limit(limit)
    )
    with session_scope(runtime.sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = list(session.scalars(due))
        if not ids:
            return []
        rows = session.execute(  # re-checked: another process may have leased some of them since the read
            update(D)
            .where(D.id.in_(ids), D.state == PENDING, or_(D.lease_until.is_(None), D.lease_until < now))
            .values(lease_until=lease, attempts=D.attempts + 1, updated_at=now)
            .returning(D.id, D.webhook_id, D.url, D.payload, D.attempts)
            .execution_options(synchronize_session=False)
        ).all()
    return [Claimed(r.id, r.webhook_id, r.url, r.payload, r.attempts) for r in rows]


def post(client: httpx.Client, settings: WebhookSettings, keys: list[bytes], item: Claimed) -> AttemptResult:
    """POST one signed delivery; never raises."""
    started = utcnow()
    clock = time.perf_counter()

    def result(**kwargs: Any) -> AttemptResult:
        return AttemptResult(started_at=started, duration_ms=(time.perf_counter() - clock) * 1000, **kwargs)

    limits = FetchLimits(
        timeout_seconds=settings.timeout_seconds, allow_private_networks=settings.allow_private_networks
    )
    try:
        check_url(item.url, limits=limits)
    except UnsafeURLError as exc:
        return result(error=f"blocked: {exc.message}", permanent=True)
    except InvalidInputError as exc:  # DNS failure: may be temporary
        return result(error=exc.message)
    body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode()
    stamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": f"atelier-compute/{__version__}",
        "webhook-id": item.webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature_header(keys, item.webhook_id, stamp, body),
    }
    try:
        response = client.post(item.url, content=body, headers=headers)
    except httpx.TimeoutException:
        return result(error=f"timed out after {settings.timeout_seconds:g} s")
    except httpx.HTTPError as exc:
        return result(error=f"{type(exc).__name__}: {exc}"[:EXCERPT])
    excerpt = response.text[:EXCERPT] if response.content else None
    if 200 <= response.status_code < 300:
        return result(status_code=response.status_code, excerpt=excerpt)
    retry_after = _retry_after(response)
    return result(
        status_code=response.status_code,
        error=f"receiver answered HTTP {response.status_code}",
        excerpt=excerpt,
        permanent=response.status_code == 410,
        retry_after=retry_after,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def backoff(settings: WebhookSettings, attempt: int, retry_after: float | None) -> float:
    """Delay after failed attempt ``attempt`` (1-based): exponential, capped, jittered; at least Retry-After."""
    delay = min(settings.backoff_base_seconds * 2 ** max(attempt - 1, 0), settings.backoff_max_seconds)
    delay *= random.uniform(1 - settings.jitter, 1 + settings.jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.backoff_max_seconds))
    return float(delay)


def record(runtime: Runtime, results: list[tuple[Claimed, AttemptResult]]) -> None:
    """Log the attempts and move their deliveries on (delivered, retried later, or given up): one transaction."""
    settings = runtime.settings.webhooks
    with session_scope(runtime.sessions) as session:
        ids = [item.id for item, _ in results]
        rows = session.scalars(select(D).where(D.id.in_(ids)).order_by(D.id).with_for_update())
        found = {delivery.id: delivery for delivery in rows}
        now = utcnow()
        for item, outcome in results:
            delivery = found.get(item.id)
            if delivery is None:  # its task or workflow was deleted meanwhile
                continue
            session.add(
                WebhookAttempt(
                    delivery_id=item.id,
                    attempt=item.attempt,
                    started_at=outcome.started_at,
                    duration_ms=round(outcome.duration_ms, 3),
                    status_code=outcome.status_code,
                    error=outcome.error,
                    response_excerpt=outcome.excerpt,
                )
            )
            if delivery.attempts == item.attempt and delivery.state == PENDING:  # else redelivered or settled
                _settle(delivery, item, outcome, settings, now)
                metrics.observe_webhook_attempt(delivery.state)


def _settle(
    delivery: WebhookDelivery, item: Claimed, outcome: AttemptResult, settings: WebhookSettings, now: datetime
) -> None:
    delivery.lease_until = None
    delivery.updated_at = now
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    if outcome.delivered:
        delivery.state = DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        return
    retry_at = now + timedelta(seconds=backoff(settings, item.attempt, outcome.retry_after))
    if outcome.permanent or retry_at > delivery.retry_until:
        delivery.state = FAILED
        delivery.next_attempt_at = None
    else:
        delivery.next_attempt_at = retry_at


class WebhookLoop(PeriodicThread):
    """Relay events and send due deliveries, in a daemon thread of ``atelier serve``.

    The loop thread does all the database work in batches — record the outcomes that came back, relay new events,
    claim as many due deliveries as there are free senders — and the sender threads only POST. A finished send wakes
    the loop, so a task's next event (due once the previous one is recorded) goes out right away, and under load
    one transaction records and one claims many deliveries.
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__("atelier-webhooks", runtime.settings.webhooks.poll_interval_seconds, self.tick)
        self.runtime = runtime
        self.settings = runtime.settings.webhooks
        self.keys = [key_bytes(s) for s in secrets_of(runtime.settings)]
        self.client = httpx.Client(timeout=self.settings.timeout_seconds, follow_redirects=False, trust_env=False)
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="atelier-webhook")
        self._in_flight = 0
        self._results: list[tuple[Claimed, AttemptResult]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the loop; events committed by this process wake it at once."""
        WEBHOOK_COMMITTED.subscribe(self.wake)
        super().start()

    def stop(self) -> None:
        """Stop claiming, let in-flight sends finish (each bounded by the timeout), record them, close the client."""
        WEBHOOK_COMMITTED.unsubscribe(self.wake)
        super().stop()
        self._pool.shutdown(wait=True)
        self._record()
        self.client.close()

    def tick(self) -> None:
        """One round: record outcomes, relay new events, claim as many due deliveries as there are free senders."""
        self._record()
        relay(self.runtime)
        with self._lock:
            free = self.settings.concurrency - self._in_flight
        if free <= 0:
            return
        for item in claim_due(self.runtime, free):  # never more than free threads: each claim starts at once
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._send, item)

    def _record(self) -> None:
        with self._lock:
            results, self._results = self._results, []
        if results:
            try:
                record(self.runtime, results)
            except Exception:  # their leases expire and the deliveries are sent again
                log.warning("recording %d webhook attempt(s) failed", len(results), exc_info=True)

    def _send(self, item: Claimed) -> None:
        try:
            outcome = post(self.client, self.settings, self.keys, item)
        except Exception as exc:  # post handles HTTP failures; anything else is recorded, never a lost sender
            log.warning("webhook delivery %s: unexpected failure", item.id, exc_info=True)
            outcome = AttemptResult(started_at=utcnow(), duration_ms=0.0, error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._results.append((item, outcome))
            self._in_flight -= 1
        self.wake()
