"""Upload checks: extension, size and image pixel bounds, before anything is written."""

from __future__ import annotations

import os

from fastapi import UploadFile

from atelier.core.errors import InvalidInputError, PayloadTooLargeError
from atelier.core.inputs import FetchLimits, probe_image
from atelier.settings import Settings

PROBE_BYTES = 4 * 1024 * 1024


def upload_size(file: UploadFile) -> int:
    """Size of the spooled upload without reading it into memory."""
    file.file.seek(0, os.SEEK_END)
    size = file.file.tell()
    file.file.seek(0)
    return size


def check_upload(settings: Settings, key: str, file: UploadFile, limits: FetchLimits) -> None:
    """Refuse wrong extensions (422), oversize files (413) and non-images or pixel bombs (422)."""
    ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    allowed = settings.storage.allowed_extensions
    if ext not in allowed:
        raise InvalidInputError(f"extension .{ext or '?'} not allowed; use one of {', '.join(allowed)}", loc=("path",))
    size = upload_size(file)
    if size > settings.storage.max_upload_bytes:
        raise PayloadTooLargeError(f"upload of {size} bytes exceeds the limit of {settings.storage.max_upload_bytes}")
    if size == 0:
        raise InvalidInputError("empty upload", loc=("body", "file"))
    # The header is enough to learn format and size; the rest of the file is never decoded here.
    head = file.file.read(PROBE_BYTES)
    file.file.seek(0)
    probe_image(head, limits=limits, loc=("body", "file"))
