"""JWT bearer authentication: principals with a tenant and a role."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from atelier.core.errors import AuthError, ForbiddenError
from atelier.settings import AuthSettings
from atelier.storage.service import TENANT_RE


class Role(StrEnum):
    """What a principal may do: admin ⊃ service (read/write) ⊃ viewer (read only)."""

    ADMIN = "admin"
    SERVICE = "service"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    subject: str
    tenant: str
    role: Role

    def require_write(self) -> None:
        """Viewers may only read."""
        if self.role is Role.VIEWER:
            raise ForbiddenError("this token has the viewer role: read-only")

    def require_admin(self) -> None:
        """Admin-only operations."""
        if self.role is not Role.ADMIN:
            raise ForbiddenError("this operation requires an admin token")


def mint_token(
    settings: AuthSettings,
    *,
    tenant: str,
    role: Role,
    subject: str | None = None,
    ttl_seconds: int | None = None,
) -> str:
    """Sign a token for ``tenant`` with ``role``."""
    if not TENANT_RE.match(tenant):
        raise ValueError("tenant must match [A-Za-z0-9_.-]{1,100}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject or f"{tenant}:{role.value}",
        "tenant": tenant,
        "role": role.value,
        "iss": settings.issuer,
        "iat": now,
        "exp": now + (ttl_seconds or settings.default_ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.secret_key, algorithm=settings.algorithm)


def decode_token(settings: AuthSettings, token: str) -> Principal:
    """Verify signature, expiry, issuer and claims; raise AuthError with the reason otherwise.

    A verified token is remembered (it is immutable), so repeated requests skip the signature check,
    which costs more than the rest of a status read; expiry is still checked on every call.
    """
    principal, expires = _verify(token, settings.secret_key, settings.algorithm, settings.issuer)
    if time.time() >= expires:
        raise AuthError("token expired")
    return principal


@functools.lru_cache(maxsize=4096)
def _verify(token: str, secret: str, algorithm: str, issuer: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[algorithm], issuer=issuer, options={"require": ["exp", "sub", "iss"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    tenant, role = claims.get("tenant"), claims.get("role")
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise AuthError("invalid token: missing or malformed tenant claim")
    try:
        principal = Principal(subject=str(claims["sub"]), tenant=tenant, role=Role(str(role)))
    except ValueError as exc:
        raise AuthError(f"invalid token: unknown role {role!r}") from exc
    return principal, float(claims["exp"])
