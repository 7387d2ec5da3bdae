"""Storage backends behind one interface: the local folder now, S3-compatible later."""

from __future__ import annotations

import mimetypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from atelier.core.errors import InvalidInputError, NotFoundError

CHUNK = 1024 * 1024
TEMP_PREFIX = ".upload-"


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object; ``key`` is the backend key (tenant prefix included)."""

    key: str
    size: int
    content_type: str
    last_modified: datetime


class StorageBackend(Protocol):
    """What every storage backend offers. Keys are validated relative paths with forward slashes."""

    def save(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        """Write an object (whole bytes or a stream), replacing any previous one."""
        ...

    def read(self, key: str) -> bytes:
        """Return the object's bytes (raises NotFoundError)."""
        ...

    def stream(self, key: str) -> Iterator[bytes]:
        """Yield the object's bytes in chunks (raises NotFoundError before the first chunk)."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Metadata, or None if the object does not exist."""
        ...

    def delete(self, key: str) -> bool:
        """Delete one object; False if it did not exist."""
        ...

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every object under ``prefix/``; return the deleted keys."""
        ...

    def list(self, prefix: str, limit: int, start_after: str | None = None) -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order, after ``start_after``."""
        ...

    def public_url(self, key: str) -> str | None:
        """A URL clients can fetch directly (CDN or presigned), or None to serve through the API."""
        ...


def guess_content_type(key: str) -> str:
    """MIME type from the file extension."""
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class LocalStorage:
    """Objects as files under one root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_prefix = str(self.root) + os.sep

    def _path(self, key: str) -> Path:
        # Lexical normalisation (no filesystem calls: this is on every read and write): ``..`` and absolute
        # keys cannot leave the root. The service only ever creates regular files under it, so there are no
        # symlinks to follow; an operator who adds one is trusted.
        path = os.path.normpath(os.path.join(self.root, key))
        if path != str(self.root) and not path.startswith(self._root_prefix):
            raise InvalidInputError(f"path escapes the storage root: {key!r}", loc=("path",))
        return Path(path)

    def save(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        """Write atomically so readers never see half a file."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out, CHUNK)
                size = out.tell()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key, size, guess_content_type(key), datetime.now(UTC))

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"no such object: {key}")
        return path

    def read(self, key: str) -> bytes:
        """Whole file."""
        try:
            with open(self._path(key), "rb") as handle:  # one open, no separate existence check
                return handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"no such object: {key}") from None

    def stream(self, key: str) -> Iterator[bytes]:
        """Chunks of the file (the file is opened before the first chunk is asked for)."""
        handle = self._existing(key).open("rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(CHUNK):
                    yield block

        return chunks()

    def stat(self, key: str) -> ObjectInfo | None:
        """File metadata."""
        path = self._path(key)
        if not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(key, st.st_size, guess_content_type(key), datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, key: str) -> bool:
        """Remove one file and prune empty parents."""
        path = self._path(key)
        if not path.is_file():
            return False
        path.unlink()
        self._prune(path.parent)
        return True

    def delete_prefix(self, prefix: str) -> list[str]:
        """Remove a whole folder."""
        folder = self._path(prefix.rstrip("/"))
        if folder == self.root or not folder.is_dir():
            return []
        keys = sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        self._prune(folder.parent)
        return keys

    def list(self, prefix: str, limit: int, start_after: str | None = None) -> list[ObjectInfo]:
        """Walk the folder that contains the prefix; keys come back in string order (S3's order)."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        folder = self._path(base) if base else self.root
        if not folder.is_dir():
            return []
        keys = sorted(
            key
            for path in folder.rglob("*")
            if path.is_file()
            and not path.name.startswith(TEMP_PREFIX)
            and (key := path.relative_to(self.root).as_posix()).startswith(prefix)
            and (start_after is None or key > start_after)
        )
        return [info for key in keys[:limit] if (info := self.stat(key)) is not None]

    def public_url(self, key: str) -> str | None:
        """Local files are always served through the API."""
        return None

    def _prune(self, folder: Path) -> None:
        while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
