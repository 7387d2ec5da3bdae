"""Standard Webhooks signatures: ``webhook-signature: v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>``.

Secrets are ``whsec_`` + base64 of the key bytes. Every configured secret signs each message (space-separated
signatures), so during a rotation receivers holding either the old or the new secret can verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from atelier.core.inputs import FetchLimits, check_url
from atelier.settings import Settings

PREFIX = "whsec_"


def key_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret (a bare base64 string is accepted too)."""
    body = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret must be `whsec_` followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def derived_secret(auth_secret: str) -> str:
    """The secret used when none is configured: derived from the JWT key, so every API replica agrees."""
    digest = hmac.new(auth_secret.encode(), b"atelier-webhook-signing-v1", hashlib.sha256).digest()
    return PREFIX + base64.b64encode(digest).decode()


def secrets_of(settings: Settings) -> list[str]:
    """The effective signing secrets, in order (configured ones, else the derived one)."""
    configured = [s.get_secret_value() for s in settings.webhooks.secrets]
    return configured or [derived_secret(settings.auth.secret_key)]


def signature_header(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys)


def check_webhook_url(url: str | None, settings: Settings, *, loc: tuple[str | int, ...]) -> None:
    """Refuse a webhook URL that points at a private or reserved address (no DNS here; the sender resolves)."""
    if url:
        limits = FetchLimits(allow_private_networks=list(settings.webhooks.allow_private_networks))
        check_url(url, limits=limits, loc=loc, resolve=False)
