"""HTTP endpoints of shot evaluation: ``POST /api/v1/evaluation/`` and ``GET /api/v1/evaluation/health``."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from atelier.core.deps import PrincipalDep, RuntimeDep
from atelier.evaluation.base import CallContext
from atelier.evaluation.schemas import EvaluationProvider, EvaluationRequest, EvaluationResponse, HealthStatus
from atelier.evaluation.service import ShotEvaluator
from atelier.storage.service import TenantStorage

router = APIRouter(prefix="/api/v1/evaluation", tags=["evaluation"])

_BUILD_LOCK = threading.Lock()


async def get_evaluator(request: Request, rt: RuntimeDep) -> ShotEvaluator:
    """The process's evaluator (backends, breakers, statistics), built on first use and kept on ``app.state``."""
    state = request.app.state
    with _BUILD_LOCK:
        evaluator: ShotEvaluator | None = getattr(state, "evaluator", None)
        if evaluator is None:
            evaluator = ShotEvaluator.from_settings(rt.settings)
            state.evaluator = evaluator
    return evaluator


EvaluatorDep = Annotated[ShotEvaluator, Depends(get_evaluator)]
ProviderQuery = Annotated[
    EvaluationProvider | None,
    Query(
        description="Evaluation backend: `local` (offline OpenCV detectors) or a vision LLM (`openai`, `anthropic`, "
        "`gemini`, `ollama`, `vertex`). Empty: `ATELIER_EVALUATION__DEFAULT_PROVIDER`."
    ),
]

_EVALUATE = (
    "Evaluate an image for shot analysis: framing and view angle (compared with the expected ones), human presence "
    "and count, anatomy, gender, collage detection and, on request, descriptions. Fields the chosen backend cannot "
    "determine are null (the `local` backend reports no gender, anatomy or descriptions).\n"
    "Send the image as `image_data` (a base64 data URL) or `image_url` (http/https; private addresses are refused). "
    "A model answer that does not fit the schema after the configured retries gives `success: false` with `error`. "
    "503 when the backend is not configured, unreachable, or failing repeatedly (its circuit breaker is open)."
)


@router.post("/", summary="Evaluate Image", description=_EVALUATE)
def evaluate_image(
    body: EvaluationRequest,
    rt: RuntimeDep,
    principal: PrincipalDep,
    evaluator: EvaluatorDep,
    provider: ProviderQuery = None,
) -> EvaluationResponse:
    """Evaluate one image (any authenticated role: evaluation stores nothing)."""
    call = CallContext(http=rt.http, fetch_limits=rt.fetch_limits, storage=TenantStorage(rt.storage, principal.tenant))
    return evaluator.evaluate(body, provider, call)


@router.get(
    "/health",
    summary="Get Evaluator Health",
    description="Health of one evaluation backend in this process: circuit breaker state, success rate and average "
    "evaluation time over the latest `ATELIER_EVALUATION__HEALTH_WINDOW` evaluations, total evaluations since start, "
    "and a score (success rate × 1 closed / 0.5 half-open / 0 open; 0 when the backend is not configured).",
)
def get_evaluator_health(
    principal: PrincipalDep, evaluator: EvaluatorDep, provider: ProviderQuery = None
) -> HealthStatus:
    """The chosen backend's health (any authenticated role)."""
    return evaluator.health(provider)
