"""Create-time handling of image inputs: validate every source, then persist inline images to storage.

Inline images (base64, data URLs) are decoded, probed against the pixel limit and written under
``{prefix}/{task_id}/inputs/``; URLs are checked against the SSRF policy (resolved again when fetched);
storage paths must exist in the caller's tenant. Nothing is written until every source has passed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import (
    FetchLimits,
    check_url,
    classify_source,
    decode_base64_payload,
    probe_image,
    safe_relative_path,
)
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import OUTPUT_PREFIX, TaskType

# (public field, create fields in order of preference, is_list)
SourceSpec = tuple[str, tuple[str, ...], bool]
SOURCE_FIELDS: dict[TaskType, tuple[SourceSpec, ...]] = {
    TaskType.IMAGE_ADJUSTER: (
        ("input_image_path", ("input_image",), False),
        ("reference_image_path", ("reference_image",), False),
    ),
    TaskType.EDITING: (
        ("base_image_path", ("base_image", "base_image_data", "base_image_url"), False),
        ("reference_images", ("reference_images",), True),
        ("reference_image_path", ("reference_image_data", "reference_image_url"), False),
    ),
    TaskType.GENERATION: (("reference_image_path", ("reference_image_data", "reference_image_url"), False),),
    TaskType.REFINE: (("base_image_url", ("base_image_url",), False),),
    TaskType.VIDEO_GENERATION: (("input_image_path", ("input_image_data", "input_image_url"), False),),
    TaskType.LLM_INTERACTION: (("input_images", ("input_images",), True),),
    TaskType.BACKGROUND_REMOVAL: (("input_image_paths", ("input_image_paths",), True),),
    TaskType.DETAIL_ENHANCER: (
        ("base_image_path", ("base_image",), False),
        ("reference_image_path", ("reference_image",), False),
    ),
    TaskType.BACKGROUND_FIX: (
        ("base_image_path", ("base_image",), False),
        ("palette_image_path", ("palette_image",), False),
    ),
    TaskType.FACE_ENHANCER: (("input_image_path", ("input_image",), False),),
}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


@dataclass
class ResolvedSources:
    """Public fields to store in ``task_data`` and inline images still to be written."""

    fields: dict[str, Any] = field(default_factory=dict)
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    consumed: set[str] = field(default_factory=set)


class SourceResolver:
    """Validates and stores the image inputs of one task being created."""

    def __init__(
        self,
        storage: TenantStorage,
        limits: FetchLimits,
        task_type: TaskType | None,
        task_id: uuid.UUID,
        prefix: str | None = None,
    ):
        self.storage = storage
        self.limits = limits
        self.task_type = task_type
        self.prefix = prefix or f"{OUTPUT_PREFIX[task_type or TaskType.GENERATION]}/{task_id}/inputs"

    def resolve(self, body: dict[str, Any]) -> ResolvedSources:
        """Validate every image source of ``body`` (raises InvalidInputError with the field's loc)."""
        out = ResolvedSources()
        for public, candidates, is_list in SOURCE_FIELDS.get(self.task_type, ()) if self.task_type else ():
            out.consumed.update(candidates)
            name = next((c for c in candidates if body.get(c)), None)
            if name is None:
                continue
            if is_list:
                out.fields[public] = [
                    self._one(v, ("body", name, i), f"{public}_{i}", out) for i, v in enumerate(body[name])
                ]
            else:
                out.fields[public] = self._one(body[name], ("body", name), public, out)
        return out

    def persist(self, resolved: ResolvedSources) -> None:
        """Write the inline images (after every source has been validated)."""
        for path, data in resolved.writes:
            self.storage.save(path, data)

    def source(self, value: str, loc: tuple[str | int, ...], stem: str, out: ResolvedSources) -> str:
        """Validate one source: a URL (SSRF policy), a storage path (must exist) or an inline image (queued)."""
        return self._one(value, loc, stem, out)

    def _one(self, value: str, loc: tuple[str | int, ...], stem: str, out: ResolvedSources) -> str:
        kind = classify_source(value, loc=loc)
        if kind == "url":
            check_url(value, limits=self.limits, loc=loc, resolve=False)
            return value
        if kind == "path":
            path = safe_relative_path(value, loc=loc)
            if self.storage.stat(path) is None:
                raise InvalidInputError(f"no such file in storage: {path}", loc=loc)
            return path
        data = decode_base64_payload(value, limits=self.limits, loc=loc)
        fmt, _w, _h = probe_image(data, limits=self.limits, loc=loc)
        path = f"{self.prefix}/{stem}.{EXTENSIONS.get(fmt, 'bin')}"
        out.writes.append((path, data))
        return path
