"""Dependency outages surface as 503 with Retry-After, and a refused submit leaves nothing behind."""

from __future__ import annotations

from tests.api.helpers import stored_files, task_count
from tests.conftest import AppFactory, data_url

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_unreachable_broker_refuses_submit_with_503(app_factory: AppFactory) -> None:
    api = app_factory(
        worker=False, broker={"url": DEAD_REDIS, "publish_timeout_seconds": 0.2}, reaper={"enabled": False}
    )
    body = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url(), "aspect_ratio": 1}
    response = api.client.post("/api/v1/tasks/", json=body, headers=api.headers())
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["code"] == "service_unavailable"
    assert task_count(api) == 0  # the client was told "not submitted": nothing may run behind its back
    assert stored_files(api) == []


def test_unreachable_database_answers_503(app_factory: AppFactory) -> None:
    api = app_factory(
        worker=False,
        database={"url": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"},
        broker={"url": DEAD_REDIS},
        reaper={"enabled": False},
        migrate=False,
    )
    response = api.client.get("/api/v1/tasks/", headers=api.headers())
    assert response.status_code == 503 and response.headers["retry-after"]
    health = api.client.get("/health").json()
    assert health["status"] == "degraded" and health["database"] == "unavailable"
