"""Signing secrets: parsing, the derived default, the CLI that prints them, signatures the library accepts."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from atelier.cli import cli
from atelier.delivery.signing import derived_secret, key_bytes, secrets_of, signature_header
from atelier.settings import Settings


def test_secrets_parse_and_refuse_garbage() -> None:
    assert key_bytes("whsec_aGVsbG8=") == b"hello" == key_bytes("aGVsbG8")  # prefix and padding optional
    for bad in ("whsec_", "whsec_!!!not-base64"):
        with pytest.raises(ValueError, match="webhook secret"):
            key_bytes(bad)


def test_derived_secret_follows_the_jwt_key_and_configured_ones_win() -> None:
    one, two = Settings(auth={"secret_key": "a" * 40}), Settings(auth={"secret_key": "b" * 40})
    assert secrets_of(one) == [derived_secret("a" * 40)] != secrets_of(two)
    configured = Settings(webhooks={"secrets": ["whsec_aGVsbG8=", "whsec_d29ybGQ="]})
    assert secrets_of(configured) == ["whsec_aGVsbG8=", "whsec_d29ybGQ="]


def test_each_signature_verifies_with_its_own_secret() -> None:
    secrets = ["whsec_aGVsbG8=", derived_secret("c" * 40)]
    body, stamp = b'{"a":1}', int(time.time())
    header = signature_header([key_bytes(s) for s in secrets], "msg_1", stamp, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "webhook-signature": header}
    for secret in secrets:
        assert Webhook(secret).verify(body, headers) == {"a": 1}


def test_cli_prints_the_secrets_in_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_WEBHOOKS__SECRETS", '["whsec_aGVsbG8="]')
    result = CliRunner().invoke(cli, ["webhook-secret"])
    assert result.exit_code == 0 and result.output.split() == ["whsec_aGVsbG8="]
    monkeypatch.delenv("ATELIER_WEBHOOKS__SECRETS")
    monkeypatch.setenv("ATELIER_AUTH__SECRET_KEY", "d" * 40)
    assert CliRunner().invoke(cli, ["webhook-secret"]).output.split() == [derived_secret("d" * 40)]
