"""The runtime: every long-lived object of a process, built from settings (never at import)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

import httpx
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from atelier.core.db import create_db_engine, create_session_factory
from atelier.core.inputs import FetchLimits
from atelier.engine.celery_app import create_celery, publisher
from atelier.engine.dispatch import install_outbox
from atelier.engine.embedded import EmbeddedWorker
from atelier.providers.registry import ProviderRegistry, default_registry
from atelier.settings import Settings
from atelier.storage.backend import StorageBackend
from atelier.storage.factory import create_storage

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Settings plus the engine, sessions, storage, providers, Celery app and HTTP client built from them."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: StorageBackend
    providers: ProviderRegistry
    http: httpx.Client
    worker_name: str
    celery: Celery = field(init=False)
    embedded_worker: EmbeddedWorker | None = field(default=None, init=False)  # set by `atelier serve` when embedded

    @property
    def fetch_limits(self) -> FetchLimits:
        """Bounds for fetching and decoding input images."""
        s = self.settings.inputs
        return FetchLimits(
            max_bytes=s.max_bytes,
            max_pixels=s.max_pixels,
            timeout_seconds=s.fetch_timeout_seconds,
            allow_private_networks=list(s.allow_private_networks),
        )

    def after_fork(self) -> None:
        """In a forked worker child: drop inherited connections (they belong to the parent) and reopen clients."""
        self.engine.dispose(close=False)
        self.http = httpx.Client(timeout=self.settings.inputs.fetch_timeout_seconds, follow_redirects=False)

    def warm_up(self) -> None:
        """Open one pooled database connection now, so a new worker process's first task does not wait for it.

        A database that cannot be reached is not an error here: the first task connects, and retries, as usual.
        """
        try:
            with self.engine.connect():
                pass
        except DBAPIError as exc:
            log.warning("database unreachable while starting a worker process (%s); its first task will connect", exc)

    def close(self) -> None:
        """Release connections."""
        self.http.close()
        self.engine.dispose()


def build_runtime(settings: Settings, providers: ProviderRegistry | None = None, *, pre_ping: bool = True) -> Runtime:
    """Create every long-lived object; the Celery task runner is wired to this runtime."""
    from atelier.tasks.execution import TaskRunner
    from atelier.tasks.transitions import install_webhook_signal
    from atelier.training.runner import TrainingRunner
    from atelier.workflows.hooks import install_workflow_hooks

    if settings.database.url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    # rembg finds its weights through this variable; an explicit environment value wins.
    os.environ.setdefault("U2NET_HOME", str(settings.models_root / "rembg"))
    engine = create_db_engine(
        settings.database_url,
        pool_size=settings.server.threadpool_size,
        echo=settings.database.echo,
        busy_timeout_ms=settings.database.sqlite_busy_timeout_ms,
        pre_ping=pre_ping,
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        storage=create_storage(settings),
        providers=providers or default_registry(settings.providers.plugins, settings.providers),
        http=httpx.Client(timeout=settings.inputs.fetch_timeout_seconds, follow_redirects=False),
        worker_name=f"{socket.gethostname()}:{os.getpid()}",
    )
    runtime.providers.configure(settings)
    runtime.sessions.configure(info={"runtime": runtime})  # engine hooks (workflow planning) reach the runtime
    install_workflow_hooks()
    install_webhook_signal(runtime.sessions)
    runner = TaskRunner(runtime)
    runtime.celery = create_celery(settings, runner.run, TrainingRunner(runtime).run)
    install_outbox(runtime.sessions, publisher(runtime.celery, settings))
    return runtime
