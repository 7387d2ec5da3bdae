"""HTTP endpoints of the LoRA file operations (shared model assets, not tenant data)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from atelier.core.auth import Principal
from atelier.core.deps import PrincipalDep, RuntimeDep
from atelier.lora.schemas import AdminLoRAUploadResponse, LoRADeleteRequest, LoRADeleteResponse, LoRAUploadResponse
from atelier.lora.service import LoraFiles, StoredLora, iso_utc, resolve_entity_type

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/v1/lora/upload"
ADMIN_UPLOAD_PATH = "/api/v1/admin/lora/upload"
ADMIN_DELETE_PATH = "/api/v1/admin/lora"
# The body-size middleware gives these paths the LoRA size cap instead of the image upload cap.
UPLOAD_PATHS = (UPLOAD_PATH, ADMIN_UPLOAD_PATH)

router = APIRouter()

_FORMATS = (
    "**Supported file formats:** .safetensors, .ckpt, .pt, .pth, .bin (a `.safetensors` file must have a valid "
    "header)\n**Maximum file size:** `ATELIER_LORA__MAX_BYTES` (500MB by default; larger files get 413)\n"
)
_STORAGE = (
    "Upload a LoRA (Low-Rank Adaptation) model file to the compute server.\n"
    "The file is streamed to `<lora root>/{entity_type}/` (`ATELIER_LORA__ROOT`) with a safe filename. When "
    "`use_safe_filename` is true (default), a duplicate name is versioned (e.g. filename_v2.safetensors); "
    "when false, a duplicate is a 409.\n"
)
UploadFileField = Annotated[UploadFile, File(description="The LoRA model file to upload")]
SafeFilenameField = Annotated[bool, Form(description="Whether to enable automatic versioning for duplicate filenames")]


async def require_admin(principal: PrincipalDep) -> Principal:
    """The caller, who must hold an admin token (403 otherwise) — checked before the body is validated."""
    principal.require_admin()
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def _store(rt: RuntimeDep, file: UploadFile, entity_type: str, versioned: bool, principal: Principal) -> StoredLora:
    stored = LoraFiles.from_settings(rt.settings).save(file.file, file.filename, entity_type, versioned=versioned)
    log.info(
        "LoRA upload %s by %s (%d bytes)",
        stored.partial_path,
        principal.subject,
        stored.size,
        extra={"tenant": principal.tenant},
    )
    return stored


@router.post(
    UPLOAD_PATH,
    tags=["lora"],
    summary="Upload a LoRA model file",
    operation_id="upload_lora",
    description=_STORAGE + _FORMATS + "**Supported entity types:** clothes, identities, product, styles "
    "(absent: 'no_type_provided')",
)
def upload_lora(
    rt: RuntimeDep,
    principal: PrincipalDep,
    file: UploadFileField,
    entity_type: Annotated[
        str | None, Form(description="The entity type (clothes, identities, product, styles)")
    ] = None,
    use_safe_filename: SafeFilenameField = True,
) -> LoRAUploadResponse:
    """Store a LoRA file under its entity type (any writing token; viewers are refused)."""
    principal.require_write()
    entity = resolve_entity_type(entity_type, admin=False)
    stored = _store(rt, file, entity, use_safe_filename, principal)
    return LoRAUploadResponse(
        file_path=str(stored.path),
        partial_path=stored.partial_path,
        filename=stored.filename,
        file_size=stored.size,
        upload_timestamp=iso_utc(stored.uploaded_at),
    )


@router.post(
    ADMIN_UPLOAD_PATH,
    tags=["admin"],
    summary="Upload a LoRA model file (Admin)",
    operation_id="admin_upload_lora",
    description=_STORAGE + _FORMATS + "**Supported entity types:** clothes, identities, product, styles, faces\n"
    "**Security:** Requires admin authentication token.",
)
def admin_upload_lora(
    rt: RuntimeDep,
    principal: AdminDep,
    file: UploadFileField,
    entity_type: Annotated[
        str | None, Form(description="The entity type (clothes, faces, identities, product, styles)")
    ] = None,
    use_safe_filename: SafeFilenameField = True,
) -> AdminLoRAUploadResponse:
    """Store a LoRA file under its entity type, ``faces`` included (admin token)."""
    entity = resolve_entity_type(entity_type, admin=True)
    stored = _store(rt, file, entity, use_safe_filename, principal)
    return AdminLoRAUploadResponse(
        file_path=str(stored.path),
        partial_path=stored.partial_path,
        filename=stored.filename,
        file_size=stored.size,
        entity_type=stored.entity_type,
        upload_timestamp=iso_utc(stored.uploaded_at),
    )


@router.delete(
    ADMIN_DELETE_PATH,
    tags=["admin"],
    summary="Delete a LoRA model file (Admin)",
    operation_id="admin_delete_lora",
    description="Delete a LoRA model file using its partial path (as returned by upload, e.g. "
    '"identities/Sh0ot1f1_01.safetensors"); the server maps it to the full path. The file is moved to the bin '
    "folder (`ATELIER_LORA__BIN_ROOT`, same layout) for recovery, never removed. 404 when it does not exist.\n"
    "**Security:** Requires admin authentication token.",
)
def admin_delete_lora(rt: RuntimeDep, principal: AdminDep, request: LoRADeleteRequest) -> LoRADeleteResponse:
    """Move one LoRA file to the bin (admin token)."""
    binned = LoraFiles.from_settings(rt.settings).move_to_bin(request.partial_path)
    log.info("LoRA file %s moved to %s by %s", binned.full_path, binned.bin_path, principal.subject)
    return LoRADeleteResponse(
        deleted=True,
        full_path=str(binned.full_path),
        bin_path=str(binned.bin_path),
        timestamp=iso_utc(binned.deleted_at),
    )
