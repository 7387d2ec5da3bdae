"""The FastAPI application factory; the runtime and the embedded worker live in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import text

from atelier import __version__
from atelier.admin.endpoints import router as admin_router
from atelier.core.deps import read_executor
from atelier.core.http import BodySizeLimit, document_error_responses, install_error_handlers
from atelier.core.runtime import Runtime, build_runtime
from atelier.dashboard import mount_dashboard
from atelier.delivery.endpoints import document_webhooks
from atelier.delivery.endpoints import router as delivery_router
from atelier.delivery.sender import WebhookLoop
from atelier.engine.celery_app import queue_name
from atelier.engine.embedded import EmbeddedWorker
from atelier.engine.reaper import ReaperLoop
from atelier.engine.recovery import recover
from atelier.engine.transport import purge_vhost
from atelier.evaluation.endpoints import router as evaluation_router
from atelier.lora.endpoints import UPLOAD_PATHS as LORA_UPLOAD_PATHS
from atelier.lora.endpoints import router as lora_router
from atelier.monitoring.endpoints import router as monitoring_router
from atelier.monitoring.metrics import metrics
from atelier.monitoring.workers_endpoints import router as workers_router
from atelier.providers.registry import ALL_QUEUES, ProviderRegistry
from atelier.settings import Settings
from atelier.status.endpoints import router as status_router
from atelier.storage.endpoints import router as storage_router
from atelier.tasks.endpoints import router as tasks_router
from atelier.training.endpoints import router as training_router
from atelier.workflows.endpoints import router as workflows_router

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Atelier Compute: submit generative-image tasks, follow their status, fetch their outputs. "
    "Every endpoint except `/health` needs `Authorization: Bearer <JWT>` (mint one with `atelier token`)."
)


def _start_engine(runtime: Runtime) -> tuple[EmbeddedWorker | None, ReaperLoop | None, WebhookLoop | None]:
    settings = runtime.settings
    worker = reaper = webhooks = None
    if settings.embedded and settings.broker.embedded_worker:
        queues = [queue_name(settings, q) for q in ALL_QUEUES]
        worker = EmbeddedWorker(runtime.celery, concurrency=settings.broker.embedded_concurrency, queues=queues)
        worker.start()
        runtime.embedded_worker = worker
    if settings.embedded:  # this process owned the only queue and worker: everything waiting is ours to restart
        recover(runtime, orphan_running=True)
    if settings.reaper.enabled:
        reaper = ReaperLoop(runtime)
        reaper.start()
    if settings.webhooks.enabled:
        webhooks = WebhookLoop(runtime)
        webhooks.start()
    return worker, reaper, webhooks


def create_app(settings: Settings | None = None, *, providers: ProviderRegistry | None = None) -> FastAPI:
    """Build the API; nothing is connected until the lifespan starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings, providers)
        app.state.runtime = runtime
        to_thread.current_default_thread_limiter().total_tokens = settings.server.threadpool_size
        app.state.read_executor = read_executor(runtime)
        worker, reaper, webhooks = _start_engine(runtime)
        try:
            yield
        finally:
            if webhooks is not None:
                webhooks.stop()
            if reaper is not None:
                reaper.stop()
            if worker is not None:
                worker.stop()
            if settings.embedded:
                purge_vhost(str(runtime.celery.conf.broker_url).rsplit("/", 1)[-1])
            if app.state.read_executor is not None:
                app.state.read_executor.shutdown(wait=True)
            runtime.close()

    app = FastAPI(title="Atelier Compute", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=max(settings.storage.max_upload_bytes, settings.inputs.max_bytes * 2) + 1024 * 1024,
        path_limits=dict.fromkeys(LORA_UPLOAD_PATHS, settings.lora.max_bytes + 1024 * 1024),
    )
    app.include_router(tasks_router)
    app.include_router(storage_router)
    app.include_router(status_router)
    app.include_router(admin_router)
    app.include_router(lora_router)
    app.include_router(training_router)
    app.include_router(workflows_router)
    app.include_router(delivery_router)
    app.include_router(monitoring_router)
    app.include_router(workers_router)
    app.include_router(evaluation_router)
    mount_dashboard(app)
    document_webhooks(app)
    app.add_api_route("/health", health, methods=["GET"], summary="Health Check", include_in_schema=True)
    if settings.metrics.enabled:
        app.add_api_route(
            "/metrics",
            metrics,
            methods=["GET"],
            summary="Prometheus Metrics",
            tags=["monitoring"],
            response_class=PlainTextResponse,  # the Prometheus text format, as documented (not JSON)
        )
    document_error_responses(app)
    return app


def health(request: Request) -> dict[str, Any]:
    """Liveness and readiness: the database answers, and which engine mode runs."""
    runtime: Runtime = request.app.state.runtime
    db_ok = True
    try:
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # reported in the body; /health never raises
        db_ok = False
    return {
        "status": "healthy" if db_ok else "degraded",
        "version": __version__,
        "database": "ok" if db_ok else "unavailable",
        "mode": "embedded" if runtime.settings.embedded else "distributed",
    }
