"""Clock helpers: every timestamp in the service is timezone-aware UTC."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header value as seconds (delta-seconds or an HTTP date, never negative), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())
