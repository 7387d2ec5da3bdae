"""Tokens and settings."""

from __future__ import annotations

import jwt
import pytest

from atelier.core.auth import Role, decode_token, mint_token
from atelier.core.errors import AuthError, ForbiddenError
from atelier.settings import DEV_SECRET, AuthSettings, Settings

AUTH = AuthSettings(secret_key="k" * 40)


def test_round_trip() -> None:
    principal = decode_token(AUTH, mint_token(AUTH, tenant="acme", role=Role.VIEWER))
    assert (principal.tenant, principal.role) == ("acme", Role.VIEWER)
    with pytest.raises(ForbiddenError):
        principal.require_write()
    with pytest.raises(ForbiddenError):
        principal.require_admin()


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "x", "tenant": "acme", "role": "root", "iss": "atelier", "exp": 9_999_999_999},
        {"sub": "x", "tenant": "../etc", "role": "admin", "iss": "atelier", "exp": 9_999_999_999},
        {"sub": "x", "role": "admin", "iss": "atelier", "exp": 9_999_999_999},
        {"sub": "x", "tenant": "acme", "role": "admin", "iss": "other", "exp": 9_999_999_999},
        {"sub": "x", "tenant": "acme", "role": "admin", "iss": "atelier", "exp": 1},
        {"sub": "x", "tenant": "acme", "role": "admin", "iss": "atelier"},
    ],
)
def test_bad_claims_are_refused(claims: dict[str, object]) -> None:
    with pytest.raises(AuthError):
        decode_token(AUTH, jwt.encode(claims, AUTH.secret_key, algorithm="HS256"))


def test_wrong_key_and_alg_none_are_refused() -> None:
    token = mint_token(AuthSettings(secret_key="z" * 40), tenant="acme", role=Role.ADMIN)
    with pytest.raises(AuthError):
        decode_token(AUTH, token)
    unsigned = jwt.encode(
        {"sub": "x", "tenant": "acme", "role": "admin", "iss": "atelier", "exp": 9_999_999_999},
        "",
        algorithm="none",
    )
    with pytest.raises(AuthError):
        decode_token(AUTH, unsigned)


def test_production_refuses_the_dev_key() -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings(environment="production")
    assert Settings(environment="production", auth={"secret_key": "p" * 40}).auth.secret_key != DEV_SECRET


def test_nested_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_TASKS__MAX_RETRIES", "7")
    monkeypatch.setenv("ATELIER_BROKER__EMBEDDED_CONCURRENCY", "3")
    settings = Settings()
    assert settings.tasks.max_retries == 7
    assert settings.broker.embedded_concurrency == 3
    assert settings.embedded


def test_every_setting_is_described() -> None:
    undocumented = [
        f"{group}.{name}"
        for group, field in Settings.model_fields.items()
        for name, sub in (getattr(field.annotation, "model_fields", {}) or {}).items()
        if not sub.description
    ] + [
        name
        for name, field in Settings.model_fields.items()
        if not (field.description or getattr(field.annotation, "__doc__", None))
    ]
    assert undocumented == []
