"""HTTP endpoints of the Storage API (tenant-scoped)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from atelier.core.auth import Principal
from atelier.core.deps import PrincipalDep, RuntimeDep
from atelier.core.errors import NotFoundError
from atelier.core.runtime import Runtime
from atelier.storage.service import StoredObject, TenantStorage
from atelier.storage.uploads import check_upload
from atelier.tasks import repository
from atelier.tasks.enums import OUTPUT_PREFIX
from atelier.tasks.lifetimes import check_not_expired

router = APIRouter(prefix="/api/v1/storage", tags=["Storage"])


class StorageObjectRead(BaseModel):
    """One stored object."""

    path: str = Field(description="Path relative to your tenant's storage root")
    size: int = Field(description="Size in bytes")
    content_type: str
    last_modified: str = Field(description="ISO-8601 UTC timestamp")

    @classmethod
    def of(cls, obj: StoredObject) -> StorageObjectRead:
        """From the storage service's object."""
        return cls(path=obj.path, size=obj.size, content_type=obj.content_type, last_modified=obj.last_modified_iso)


class StorageListResponse(BaseModel):
    """A page of stored objects."""

    items: list[StorageObjectRead]
    count: int
    prefix: str | None
    limit: int
    next_start_after: str | None = Field(description="Pass as start_after to get the next page; null at the end")


class StorageDeleteResponse(BaseModel):
    """Result of a delete."""

    path: str
    deleted: bool


@router.get("/images", summary="List Images")
def list_images(
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Maximum number of objects")] = 100,
    prefix: Annotated[str | None, Query(max_length=1024, description="Only paths starting with this")] = None,
    start_after: Annotated[str | None, Query(max_length=1024, description="Continue after this path")] = None,
) -> StorageListResponse:
    """List stored images under an optional prefix, in path order, with cursor pagination."""
    items = TenantStorage(rt.storage, principal.tenant).list(prefix, limit + 1, start_after)
    page, more = items[:limit], len(items) > limit
    return StorageListResponse(
        items=[StorageObjectRead.of(o) for o in page],
        count=len(page),
        prefix=prefix,
        limit=limit,
        next_start_after=page[-1].path if more else None,
    )


_TASK_FOLDERS = frozenset(OUTPUT_PREFIX.values())


def _require(rt: Runtime, principal: Principal, path: str) -> StoredObject:
    """The object; a file of a task past its retention is 410 Gone (purged or not yet), never a plain 404."""
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in _TASK_FOLDERS:
        try:
            task_id = uuid.UUID(parts[1])
        except ValueError:
            pass
        else:
            with rt.engine.connect() as conn:
                task = repository.read_record(conn, principal.tenant, task_id)
            if task is not None:
                check_not_expired(task)
    return TenantStorage(rt.storage, principal.tenant).require(path)


# What GET/HEAD really answer: the stored bytes in their own content type, or a redirect to the backend's URL.
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes (Content-Type of the stored object)",
        "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
    },
    307: {"description": "Redirect to the public/CDN or presigned URL of the object (object-store backends)"},
}


@router.get(
    "/images/{path:path}",
    summary="Get Image",
    response_model=None,
    response_class=Response,
    responses=_IMAGE_RESPONSES,
)
def get_image(path: str, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    """Return the image bytes, or redirect to the public/CDN URL when the backend has one."""
    storage = TenantStorage(rt.storage, principal.tenant)
    obj = _require(rt, principal, path)
    url = storage.public_url(obj.path)
    if url:
        return RedirectResponse(url, status_code=307)
    headers = {"Content-Length": str(obj.size), "Cache-Control": "private, max-age=60"}
    return StreamingResponse(storage.stream(obj.path), media_type=obj.content_type, headers=headers)


@router.head(
    "/images/{path:path}",
    summary="Check Image Exists",
    response_model=None,
    response_class=Response,
    responses={200: {"description": "The image exists (Content-Type/Content-Length of the stored object, no body)"}},
)
def head_image(path: str, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    """200 with Content-Length/Content-Type when the image exists, 404 otherwise."""
    obj = _require(rt, principal, path)
    return Response(
        status_code=200,
        headers={
            "Content-Length": str(obj.size),
            "Content-Type": obj.content_type,
            "Last-Modified": obj.last_modified_iso,
        },
    )


@router.post("/images/{path:path}", summary="Save Image")
def save_image(
    path: str,
    rt: RuntimeDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="The image")],
) -> StorageObjectRead:
    """Store an uploaded image at ``path`` (bounded size, known image format, pixel limit)."""
    principal.require_write()
    storage = TenantStorage(rt.storage, principal.tenant)
    key = storage.key(path)
    check_upload(rt.settings, key, file, rt.fetch_limits)
    return StorageObjectRead.of(storage.save(path, file.file, file.content_type))


@router.delete("/images/{path:path}", summary="Delete Image")
def delete_image(path: str, rt: RuntimeDep, principal: PrincipalDep) -> StorageDeleteResponse:
    """Delete one image (404 if it does not exist)."""
    principal.require_write()
    if not TenantStorage(rt.storage, principal.tenant).delete(path):
        raise NotFoundError(f"no such object: {path}")
    return StorageDeleteResponse(path=path, deleted=True)
