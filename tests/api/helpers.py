"""Assertions shared by the API tests."""

from __future__ import annotations

from typing import Any

from httpx import Response
from sqlalchemy import func, select

from atelier.core.runtime import Runtime
from atelier.tasks.models import Task
from tests.conftest import Api


def runtime_of(api: Api) -> Runtime:
    """The runtime behind a test client."""
    runtime: Runtime = api.client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def task_count(api: Api) -> int:
    """Rows in the tasks table."""
    with runtime_of(api).sessions() as session:
        return int(session.execute(select(func.count()).select_from(Task)).scalar_one())


def stored_files(api: Api) -> list[str]:
    """Every file in local storage."""
    root = api.settings.storage_root
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_422(response: Response, *loc_parts: Any) -> dict[str, Any]:
    """FastAPI's validation shape, with an error whose loc contains ``loc_parts`` in order."""
    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["detail"], list) and body["detail"]
    for error in body["detail"]:
        assert {"loc", "msg", "type"} <= error.keys()
    if loc_parts:
        locs = [tuple(e["loc"]) for e in body["detail"]]
        assert any(all(part in loc for part in loc_parts) for loc in locs), locs
    return body
