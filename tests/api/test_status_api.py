"""The two status surfaces over the same task rows: /v2/status/{request_id} and /v1/jobs/{id}."""

from __future__ import annotations

import uuid

from atelier.core.auth import Role, mint_token
from tests.conftest import Api, data_url


def adjust() -> dict[str, object]:
    """A real image task."""
    return {
        "task_type": "IMAGE_ADJUSTER",
        "input_image": data_url((40, 20)),
        "aspect_ratio": 1,
        "mode": "pad",
    }


def test_bria_flow_completed(api: Api) -> None:
    created = api.create(adjust())
    api.wait(created["id"])
    response = api.client.get(created["status_url"], headers=api.headers())
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "COMPLETED" and body["request_id"] == created["id"]
    image = api.client.get(body["result"]["image_url"], headers=api.headers())
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_bria_in_progress_error_and_not_found(idle_api: Api) -> None:
    pending = idle_api.create(adjust())
    body = idle_api.client.get(f"/v2/status/{pending['id']}", headers=idle_api.headers()).json()
    assert body["status"] == "IN_PROGRESS"
    idle_api.client.post(f"/api/v1/tasks/{pending['id']}/cancel", headers=idle_api.headers())
    body = idle_api.client.get(f"/v2/status/{pending['id']}", headers=idle_api.headers()).json()
    assert body["status"] == "ERROR"
    assert set(body["error"]) == {"code", "message", "details"} and body["error"]["code"] == 499
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        missing = idle_api.client.get(f"/v2/status/{unknown}", headers=idle_api.headers())
        assert missing.status_code == 404 and missing.json() == {"status": "NOT_FOUND"}


def test_bria_failed_task_reports_error_with_200(api: Api) -> None:
    created = api.create({"task_type": "VIDEO_GENERATION", "prompt": "turn around", "provider_type": "LOCAL"})
    api.wait(created["id"])
    response = api.client.get(f"/v2/status/{created['id']}", headers=api.headers())
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == 501 and "VIDEO_GENERATION" in error["message"]
    assert error["details"].startswith("PROVIDER_NOT_AVAILABLE")


def test_bria_accepts_api_token_header_and_isolates_tenants(idle_api: Api) -> None:
    created = idle_api.create(adjust())
    token = mint_token(idle_api.settings.auth, tenant="acme", role=Role.VIEWER)
    assert idle_api.client.get(f"/v2/status/{created['id']}", headers={"api_token": token}).status_code == 200
    other = idle_api.client.get(f"/v2/status/{created['id']}", headers=idle_api.headers("globex"))
    assert other.status_code == 404
    unauth = idle_api.client.get(f"/v2/status/{created['id']}")
    assert unauth.status_code == 401
    assert set(unauth.json()) == {"error", "request_id"} and unauth.json()["error"]["code"] == 401


def test_jobs_surface_pending(idle_api: Api) -> None:
    pending = idle_api.create(adjust())
    body = idle_api.client.get(f"/v1/jobs/{pending['id']}", headers=idle_api.headers()).json()
    assert body["status"] == "pending" and body["job_id"] == pending["id"]
    assert "started_at" not in body and "completed_at" not in body and "result" not in body and "error" not in body


def test_jobs_surface_finished(api: Api) -> None:
    done = api.create(adjust())
    api.wait(done["id"])
    body = api.client.get(f"/v1/jobs/{done['id']}", headers=api.headers()).json()
    assert body["status"] == "completed" and body["started_at"] and body["completed_at"]
    assert body["scenes_completed"] == body["scenes_total"] == 1
    assert body["result"]["id"] == done["id"] and body["result"]["image_url"].startswith("http")
    failed = api.create({"task_type": "VIDEO_GENERATION", "prompt": "turn around", "provider_type": "LOCAL"})
    api.wait(failed["id"])
    body = api.client.get(f"/v1/jobs/{failed['id']}", headers=api.headers()).json()
    assert body["status"] == "failed" and body["error"]["code"] == "provider_not_available"
    missing = api.client.get(f"/v1/jobs/{uuid.uuid4()}", headers=api.headers())
    assert missing.status_code == 404
    assert (
        set(missing.json()) == {"error", "message", "request_id", "details"} and missing.json()["error"] == "not_found"
    )
