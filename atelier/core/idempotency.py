"""``Idempotency-Key`` on the create endpoints: a repeated submit answers the first one's resource.

A key is stored per tenant with the endpoint, a SHA-256 of the request and the resource the first request created,
and expires after ``tasks.idempotency_ttl_seconds`` (the reaper deletes expired rows). The key row is inserted in
the SAME transaction as the resource, *before* the resource is built, under a unique constraint on
``(tenant_id, key)``: of two concurrent requests with one key, the second one's insert waits for the first one's
transaction (PostgreSQL: the unique index entry; SQLite: the write lock) and then fails. That request rolls back —
it has written, stored and buffered nothing yet, so nothing is published — and answers the first one's resource.
Its resource id is set (``Claim.bind``) before the commit, so a committed row always names its resource.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Header, Response
from pydantic import BaseModel
from sqlalchemy import CursorResult, Integer, String, UniqueConstraint, Uuid, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from atelier.core.auth import Principal
from atelier.core.db import Base, UTCDateTime
from atelier.core.errors import ConflictError, InvalidInputError, NotFoundError, ServiceUnavailableError
from atelier.core.time import utcnow

T = TypeVar("T")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"  # printable ASCII
_KEY = re.compile(KEY_PATTERN)
LOC = ("header", "idempotency-key")
_UNBOUND = uuid.UUID(int=0)  # resource id until ``bind``; never committed

ResourceType = Literal["task", "workflow"]

# Validated by ``claim`` (not by FastAPI, which would report the loc as the alias' spelling); the schema keywords
# below only document the rule in the OpenAPI.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Optional: 1–255 printable ASCII characters. Repeating a create with the same key and the same "
        "request (same tenant, endpoint and body) within `ATELIER_TASKS__IDEMPOTENCY_TTL_SECONDS` answers the "
        "resource the first request created, as it is now, with `Idempotent-Replayed: true`; nothing new is created. "
        "The same key with a different request is a 422; a key whose resource was deleted is a 409.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
    ),
]


class IdempotencyKey(Base):
    """One use of an ``Idempotency-Key``: the request it came with and the resource that request created."""

    __tablename__ = "idempotency_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    endpoint: Mapped[str] = mapped_column(String(100))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(20))
    resource_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    status_code: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (UniqueConstraint("tenant_id", "key", name="uq_idempotency_keys_tenant_key"),)


def request_hash(body: BaseModel, query: dict[str, Any] | None = None) -> str:
    """SHA-256 of the canonical JSON of the validated body (defaults filled in) and the query flags that matter."""
    canonical = json.dumps(
        {"body": body.model_dump(mode="json"), "query": query or {}}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Claim:
    """What a create request does about its key: create (holding ``row``) or answer an earlier use (``replay``).

    Without a key both are ``None`` and every method is a no-op: the endpoint behaves as if the feature did not exist.
    """

    session: Session
    key: str | None = None
    row: IdempotencyKey | None = None
    replay: IdempotencyKey | None = None

    def bind(self, resource_id: uuid.UUID) -> None:
        """Name the resource this request created (before the commit that stores both)."""
        if self.row is not None:
            self.row.resource_id = resource_id

    def replayed(self, read: Callable[[uuid.UUID], T], response: Response) -> T:
        """The earlier request's resource as it is now (``read`` raises NotFoundError when it is gone → 409)."""
        earlier = self.replay
        assert earlier is not None, "replayed() without an earlier use"
        try:
            resource = read(earlier.resource_id)
        except NotFoundError:
            raise ConflictError(
                f"Idempotency-Key {self.key} was used for {earlier.resource_type} {earlier.resource_id}, which no "
                "longer exists; the key stays taken until it expires, send a new key to submit again"
            ) from None
        response.status_code = earlier.status_code
        response.headers[REPLAYED_HEADER] = "true"
        return resource

    @contextmanager
    def released_if_refused(self) -> Iterator[None]:
        """Free the key when the submit is taken back after its commit (503: "nothing was submitted, retry")."""
        try:
            yield
        except ServiceUnavailableError:
            if self.row is not None:
                self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == self.row.id))
                self.session.commit()
            raise


def claim(
    session: Session,
    principal: Principal,
    key: str | None,
    *,
    endpoint: str,
    resource_type: ResourceType,
    body: BaseModel,
    query: dict[str, Any] | None = None,
    ttl_seconds: int,
    status_code: int = 200,
) -> Claim:
    """Check the key and either hold it for a new resource (in the session's transaction) or find its earlier use.

    Must run before anything else of the request is written. 422 for a malformed key or a key already used with a
    different request; 403 for a viewer (checked before any lookup).
    """
    if key is None:
        return Claim(session)
    if not _KEY.fullmatch(key):
        raise InvalidInputError(
            f"{HEADER} must be 1–{MAX_KEY_LENGTH} printable ASCII characters", loc=LOC, details={"length": len(key)}
        )
    principal.require_write()
    fingerprint = request_hash(body, query)
    now = utcnow()
    earlier = _find(session, principal.tenant, key)
    if earlier is not None and earlier.expires_at > now:
        return Claim(session, key, replay=_same_request(earlier, key, endpoint, fingerprint))
    if earlier is not None:  # expired, not yet swept: the key is free again
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == earlier.id, IdempotencyKey.expires_at <= now))
    row = IdempotencyKey(
        tenant_id=principal.tenant,
        key=key,
        endpoint=endpoint,
        request_hash=fingerprint,
        resource_type=resource_type,
        resource_id=_UNBOUND,
        status_code=status_code,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with this key committed first. Nothing of ours exists yet (no row, file or message).
        session.rollback()
        winner = _find(session, principal.tenant, key)
        if winner is None:  # pragma: no cover - the winner's row vanished between its commit and our read
            raise ConflictError(f"{HEADER} {key} is in use by a concurrent request; retry") from None
        return Claim(session, key, replay=_same_request(winner, key, endpoint, fingerprint))
    return Claim(session, key, row=row)


def _find(session: Session, tenant: str, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant, IdempotencyKey.key == key)
    return session.scalars(stmt.execution_options(populate_existing=True)).first()


def _same_request(earlier: IdempotencyKey, key: str, endpoint: str, fingerprint: str) -> IdempotencyKey:
    if earlier.endpoint != endpoint or earlier.request_hash != fingerprint:
        raise InvalidInputError(f"{HEADER} {key} was already used with a different request", loc=LOC)
    return earlier


def delete_expired(session: Session, *, now: datetime, limit: int) -> int:
    """Delete up to ``limit`` expired keys, oldest first; returns how many were deleted."""
    oldest = (
        select(IdempotencyKey.id)
        .where(IdempotencyKey.expires_at <= now)
        .order_by(IdempotencyKey.expires_at)
        .limit(limit)
        .scalar_subquery()
    )
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.id.in_(oldest)).execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)  # a DELETE's result
    return int(result.rowcount)
