"""``verify_webhook`` against signatures made by the server's signer and by an independent implementation."""

from __future__ import annotations

import base64
import json
import time
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


@pytest.mark.parametrize(
    ("headers", "secret", "message"),
    [
        (signed([SECRET], int(time.time())), OTHER, "no webhook-signature matches"),
        (signed([SECRET], int(time.time()), b'{"tampered": true}'), SECRET, "no webhook-signature matches"),
        (signed([SECRET], int(time.time()) - 3600), SECRET, "outside the 300 s tolerance"),
        (signed([SECRET], int(time.time()) + 3600), SECRET, "outside the 300 s tolerance"),
        ({"webhook-id": "m", "webhook-timestamp": str(int(time.time()))}, SECRET, "missing webhook-signature"),
        ({"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,x"}, SECRET, "not a Unix time"),
        (signed([SECRET], int(time.time())), "whsec_!!!", "base64"),
    ],
)
def test_bad_or_stale_webhooks_are_refused(headers: dict[str, str], secret: str, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(BODY, headers, secret)


def test_the_tolerance_is_adjustable() -> None:
    old = int(time.time()) - 600
    assert verify_webhook(BODY, signed([SECRET], old), SECRET, tolerance=900)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(BODY, signed([SECRET], old), SECRET, now=old + 301)
