"""HTTP endpoints of the Monitoring API (`/api/v1/monitoring/…`)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/monitoring", tags=["monitoring"])
