"""Pure parts of the remote HTTP layer: URL redaction, Retry-After, error details with secrets masked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from atelier.providers.remote.client import error_detail, redact_url, retry_after_seconds


def test_redact_url_drops_user_info_and_secret_params() -> None:
    url = "https://user:pw@api.example.com/v1/x?key=abc&page=2&X-Amz-Signature=zz"
    clean = redact_url(url)
    assert "pw" not in clean and "abc" not in clean and "zz" not in clean
    assert "page=2" in clean and clean.startswith("https://api.example.com/v1/x?")


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("soon", None)])
def test_retry_after_seconds(header: str, expected: float | None) -> None:
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": header})) == expected


def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_seconds(httpx.Response(429, headers={"Retry-After": when}))
    assert seconds is not None and 25 <= seconds <= 30


def test_error_detail_joins_vendor_fields_and_masks_keys() -> None:
    fashn = httpx.Response(400, json={"error": "BadRequest", "message": "garment_image is not an image"})
    assert error_detail(fashn) == "BadRequest: garment_image is not an image"
    openai = httpx.Response(401, json={"error": {"message": "Incorrect API key provided: sk-proj-abcd1234"}})
    assert error_detail(openai) == "Incorrect API key provided: ***"
    google = httpx.Response(400, json={"error": {"code": 400, "message": "bad size", "status": "INVALID_ARGUMENT"}})
    assert error_detail(google) == "INVALID_ARGUMENT: bad size"
    freepik = httpx.Response(400, json={"message": "bad", "invalid_params": [{"field": "image", "reason": "empty"}]})
    assert "image" in error_detail(freepik) and "empty" in error_detail(freepik)
    echoed = httpx.Response(403, text="key my-secret-key refused")
    assert error_detail(echoed, secret="my-secret-key") == "key *** refused"
