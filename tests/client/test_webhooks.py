"""``verify_webhook`` against signatures made by the server's signer and by an independent implementation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from atelier.client import WebhookVerificationError, verify_webhook
from atelier.delivery.signing import derived_secret, key_bytes, signature_header

SECRET = derived_secret("x" * 40)
OTHER = "whsec_" + base64.b64encode(b"another key of some length").decode()
BODY = json.dumps({"event_type": "TASK_STATUS", "task_id": "t1", "status": "COMPLETED"}).encode()


def signed(secrets: list[str], timestamp: int, body: bytes = BODY) -> dict[str, str]:
    """Headers as the delivery loop sends them."""
    signature = signature_header([key_bytes(s) for s in secrets], "msg_1", timestamp, body)
    return {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(timestamp), "Webhook-Signature": signature}


def test_a_good_signature_verifies_and_returns_the_body() -> None:
    assert verify_webhook(BODY, signed([SECRET], int(time.time())), SECRET)["status"] == "COMPLETED"
    assert verify_webhook(BODY.decode(), signed([OTHER, SECRET], int(time.time())), [SECRET])["task_id"] == "t1"


def test_signatures_of_an_independent_implementation_verify() -> None:
    now = datetime.now(UTC)
    signature = Webhook(SECRET).sign("msg_2", now, BODY.decode())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert verify_webhook(BODY, headers, SECRET)["event_type"] == "TASK_STATUS"


# Headers are built when the test runs (built at collection, "now" would be stale in a long test session).
BAD: list[tuple[Callable[[int], dict[str, str]], str, str]] = [
    (lambda now: signed([SECRET], now), OTHER, "no webhook-signature matches"),
    (lambda now: signed([SECRET], now, b'{"tampered": true}'), SECRET, "no webhook-signature matches"),
    (lambda now: signed([SECRET], now - 3600), SECRET, "outside the 300 s tolerance"),
    (lambda now: signed([SECRET], now + 3600), SECRET, "outside the 300 s tolerance"),
    (lambda now: {"webhook-id": "m", "webhook-timestamp": str(now)}, SECRET, "missing webhook-signature"),
    (lambda now: {"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,x"}, SECRET, "not a Unix"),
    (lambda now: signed([SECRET], now), "whsec_!!!", "base64"),
]


@pytest.mark.parametrize(("headers", "secret", "message"), BAD)
def test_bad_or_stale_webhooks_are_refused(headers: Callable[[int], dict[str, str]], secret: str, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(BODY, headers(int(time.time())), secret)


def test_the_tolerance_is_adjustable() -> None:
    old = int(time.time()) - 600
    assert verify_webhook(BODY, signed([SECRET], old), SECRET, tolerance=900)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, signed([SECRET], old), SECRET, now=old + 301)
