"""The hot reads (task and status reads) run on threads of their own on SQLite, the shared threadpool elsewhere."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine

from atelier.core.deps import SQLITE_READ_THREADS, read_executor
from atelier.settings import Settings
from atelier.status import endpoints as status_endpoints
from atelier.tasks import endpoints as task_endpoints
from tests.conftest import AppFactory, data_url

ADJUST = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": 1}


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Record the name of the thread each call of ``module.name`` runs on."""
    threads: list[str] = []
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return threads


def test_task_and_status_reads_run_on_the_read_threads(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = app_factory(worker=False)
    created = api.create(ADJUST)
    task_reads = _spy(monkeypatch, task_endpoints, "read_task")
    status_reads = _spy(monkeypatch, status_endpoints, "_find")
    assert api.client.get(f"/api/v1/tasks/{created['id']}", headers=api.headers()).json()["status"] == "PENDING"
    assert api.client.get(f"/v2/status/{created['id']}", headers=api.headers()).json()["status"] == "IN_PROGRESS"
    assert api.client.get(f"/v1/jobs/{created['id']}", headers=api.headers()).status_code == 200
    assert len(task_reads) == 1 and len(status_reads) == 2
    assert all(name.startswith("atelier-read") for name in task_reads + status_reads), task_reads + status_reads
    executor = api.client.app.state.read_executor  # type: ignore[attr-defined]
    assert executor._max_workers == SQLITE_READ_THREADS


def test_read_threads_setting_sizes_the_pool_and_errors_still_map(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, server={"read_threads": 1})
    assert api.client.app.state.read_executor._max_workers == 1  # type: ignore[attr-defined]
    missing = api.client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000", headers=api.headers())
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


def test_postgresql_reads_use_the_shared_threadpool(tmp_path: Any) -> None:
    settings = Settings(environment="test", data_dir=tmp_path)
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected
    assert read_executor(SimpleNamespace(settings=settings, engine=engine)) is None  # type: ignore[arg-type]
    explicit = Settings(environment="test", data_dir=tmp_path, server={"read_threads": 3})
    executor = read_executor(SimpleNamespace(settings=explicit, engine=engine))  # type: ignore[arg-type]
    assert executor is not None and executor._max_workers == 3
    executor.shutdown()
