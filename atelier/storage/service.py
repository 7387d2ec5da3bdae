"""Tenant-scoped view of the storage backend: every key lives under ``tenants/{tenant}/``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from atelier.core.errors import InvalidInputError, NotFoundError
from atelier.core.inputs import safe_relative_path
from atelier.storage.backend import ObjectInfo, StorageBackend

TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class StoredObject:
    """An object as a tenant sees it: ``path`` is relative to the tenant's root."""

    path: str
    size: int
    content_type: str
    last_modified_iso: str


class TenantStorage:
    """All storage access on behalf of one tenant; other tenants' keys are unreachable by construction."""

    def __init__(self, backend: StorageBackend, tenant: str) -> None:
        if not TENANT_RE.match(tenant) or tenant in {".", ".."}:
            raise InvalidInputError(f"invalid tenant id {tenant!r}")
        self.backend = backend
        self.root = f"tenants/{tenant}/"

    def key(self, path: str, loc: tuple[str | int, ...] = ("path",)) -> str:
        """Backend key of a tenant path (refuses traversal)."""
        return self.root + safe_relative_path(path, loc=loc)

    def _public(self, info: ObjectInfo) -> StoredObject:
        return StoredObject(
            info.key.removeprefix(self.root), info.size, info.content_type, info.last_modified.isoformat()
        )

    def save(self, path: str, data: bytes | BinaryIO, content_type: str | None = None) -> StoredObject:
        """Write an object."""
        return self._public(self.backend.save(self.key(path), data, content_type))

    def read(self, path: str) -> bytes:
        """Read an object."""
        return self.backend.read(self.key(path))

    def stream(self, path: str) -> Iterator[bytes]:
        """Stream an object."""
        return self.backend.stream(self.key(path))

    def stat(self, path: str) -> StoredObject | None:
        """Metadata or None."""
        info = self.backend.stat(self.key(path))
        return self._public(info) if info else None

    def require(self, path: str, loc: tuple[str | int, ...] = ("path",)) -> StoredObject:
        """Metadata, or NotFoundError."""
        info = self.backend.stat(self.key(path, loc))
        if info is None:
            raise NotFoundError(f"no such object: {path}")
        return self._public(info)

    def delete(self, path: str) -> bool:
        """Delete one object."""
        return self.backend.delete(self.key(path))

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete a folder; return tenant-relative paths."""
        keys = self.backend.delete_prefix(self.key(prefix))
        return [k.removeprefix(self.root) for k in keys]

    def list(self, prefix: str | None, limit: int, start_after: str | None = None) -> list[StoredObject]:
        """List objects under an optional prefix."""
        full = self.root + (safe_relative_path(prefix, loc=("prefix",)) if prefix else "")
        if prefix and prefix.endswith("/"):
            full += "/"
        after = self.key(start_after, ("start_after",)) if start_after else None
        return [self._public(i) for i in self.backend.list(full, limit, after)]

    def public_url(self, path: str) -> str | None:
        """Direct URL when the backend has one."""
        return self.backend.public_url(self.key(path))
