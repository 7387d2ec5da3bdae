"""API contract of the LoRA file operations (field names and descriptions as in the reference spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoRAUploadResponse(BaseModel):
    """Response model for LoRA upload endpoint."""

    file_path: str = Field(description="Full path where the LoRA file was stored")
    partial_path: str = Field(
        description="Partial path relative to base models directory (e.g., 'identities/lora_name.safetensors')"
    )
    filename: str = Field(description="Original filename of the uploaded file")
    file_size: int = Field(description="Size of the uploaded file in bytes")
    upload_timestamp: str = Field(description="ISO timestamp of when the file was uploaded")


class AdminLoRAUploadResponse(BaseModel):
    """Response model for admin LoRA upload."""

    file_path: str = Field(
        description="Full path where the file was saved",
        json_schema_extra={"example": "/data/models/loras/identities/my_lora.safetensors"},
    )
    partial_path: str = Field(
        description="Relative path within the LoRA directory",
        json_schema_extra={"example": "identities/my_lora.safetensors"},
    )
    filename: str = Field(description="Original filename", json_schema_extra={"example": "my_lora.safetensors"})
    file_size: int = Field(description="Size of the uploaded file in bytes", json_schema_extra={"example": 142857})
    entity_type: str = Field(description="The entity type category", json_schema_extra={"example": "identities"})
    upload_timestamp: str = Field(
        description="ISO format timestamp of when the file was uploaded",
        json_schema_extra={"example": "2024-01-01T12:00:00Z"},
    )


class LoRADeleteRequest(BaseModel):
    """Request model for deleting a LoRA model file."""

    model_config = ConfigDict(extra="forbid")

    partial_path: str = Field(
        min_length=1,
        max_length=1024,
        description="Relative path of the LoRA file (as returned by upload)",
        json_schema_extra={"example": "identities/Sh0ot1f1_01.safetensors"},
    )


class LoRADeleteResponse(BaseModel):
    """Response model for LoRA deletion."""

    deleted: bool = Field(description="Whether the file was successfully deleted")
    full_path: str = Field(
        description="Full path of the deleted file",
        json_schema_extra={"example": "/data/models/loras/identities/Sh0ot1f1_01.safetensors"},
    )
    bin_path: str | None = Field(
        None,
        description="Path where the file was moved in the bin",
        json_schema_extra={"example": "/data/bin/models/loras/identities/Sh0ot1f1_01.safetensors"},
    )
    timestamp: str = Field(
        description="ISO format timestamp of the deletion", json_schema_extra={"example": "2024-01-01T12:00:00Z"}
    )
