"""Operator endpoints (admin role only)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atelier.core.deps import PrincipalDep, RuntimeDep
from atelier.engine.recovery import recover

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class RecoveryResponse(BaseModel):
    """What a recovery sweep did."""

    republished: int = Field(description="Tasks whose 'run now' message was published again")


@router.post("/recovery", summary="Re-publish waiting tasks (Admin)")
def run_recovery(rt: RuntimeDep, principal: PrincipalDep) -> RecoveryResponse:
    """Publish every PENDING task again (e.g. after the broker lost its queue). Duplicates are harmless."""
    principal.require_admin()
    return RecoveryResponse(republished=recover(rt, orphan_running=False))
