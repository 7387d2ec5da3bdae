"""Build the configured storage backend."""

from __future__ import annotations

from atelier.settings import Settings
from atelier.storage.backend import LocalStorage, StorageBackend


def create_storage(settings: Settings) -> StorageBackend:
    """The local folder or the S3-compatible bucket, per ``ATELIER_STORAGE__BACKEND``."""
    if settings.storage.backend == "s3":
        from atelier.storage.s3 import S3Storage

        return S3Storage(settings.storage)
    return LocalStorage(settings.storage_root)
