"""HTTP endpoints of the Training API."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from atelier.core.deps import PrincipalDep, RuntimeDep, SessionDep
from atelier.training.schemas import TrainingTask, TrainingTaskCreate
from atelier.training.service import TrainingService, public

router = APIRouter(prefix="/api/v1/training", tags=["Training"])


@router.post("/", summary="Create Training Task")
def create_training_task(
    body: TrainingTaskCreate, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> TrainingTask:
    """Create and start a new training task.

    Every source image is checked first (URLs against the network policy, storage paths for existence, inline
    images decoded and size-checked); nothing is written when one is refused. The training is queued on the
    ``training`` queue at once.
    """
    row = TrainingService(session, rt, principal).create(body)
    session.commit()  # the message is published after this commit
    return public(row)


@router.get("/", summary="List Training Tasks")
def list_training_tasks(
    session: SessionDep,
    rt: RuntimeDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    skip: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # bounded: OFFSET is a 64-bit integer in the database
) -> list[TrainingTask]:
    """List all training tasks with pagination (newest first)."""
    return [public(row) for row in TrainingService(session, rt, principal).list(limit=limit, skip=skip)]


@router.get("/{task_id}", summary="Get Training Status")
def get_training_status(
    task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep
) -> TrainingTask:
    """Get status of a training task: progress, step, ETA, preprocessing stage and counts, logs, outputs."""
    return public(TrainingService(session, rt, principal).get(task_id))


@router.post("/{task_id}/cancel", summary="Cancel Training")
def cancel_training(task_id: uuid.UUID, session: SessionDep, rt: RuntimeDep, principal: PrincipalDep) -> TrainingTask:
    """Cancel a running training task.

    A PENDING training is cancelled at once. A running one is flagged: the loop stops before its next step, keeps
    a checkpoint (``local_model_path``) and ends CANCELLED. A finished one answers 409.
    """
    row = TrainingService(session, rt, principal).cancel(task_id)
    session.commit()
    return public(row)
