"""Verifying the webhooks Atelier sends (Standard Webhooks signatures), for receivers written in Python."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from atelier.client.errors import WebhookVerificationError

DEFAULT_TOLERANCE_SECONDS = 300


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing {name} header")


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Check a webhook's signature and timestamp and return its parsed JSON body.

    ``payload`` is the raw request body (verify before parsing: re-serialised JSON does not verify); ``headers`` the
    request's headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); ``secret`` the ``whsec_…``
    secret from ``atelier webhook-secret`` (or several, during a rotation). Raises ``WebhookVerificationError`` when
    no signature matches or the timestamp is more than ``tolerance`` seconds away from ``now`` (replays).
    """
    from atelier.delivery.signing import key_bytes, signature_header  # the server's own signing code

    body = payload.encode() if isinstance(payload, str) else payload
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a Unix time: {stamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {timestamp} is outside the {tolerance:g} s tolerance")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    try:
        expected = signature_header([key_bytes(s) for s in secrets], msg_id, timestamp, body).split()
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    received = _header(headers, "webhook-signature").split()
    if not any(hmac.compare_digest(e, r) for e in expected for r in received):
        raise WebhookVerificationError("no webhook-signature matches the secret")
    return json.loads(body)
