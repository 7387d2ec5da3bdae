"""The dashboard's static files: served at /dashboard/ with the right types and headers, public, self-contained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from atelier.app import create_app
from atelier.dashboard import STATIC_DIR
from tests.conftest import Api, make_settings

FILES = {"index.html": "text/html", "app.js": "javascript", "app.css": "text/css"}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """The app without its lifespan: static files need no runtime."""
    return TestClient(create_app(make_settings(tmp_path / "data")))


def test_dashboard_without_slash_redirects_to_the_folder(client: TestClient) -> None:
    response = client.get("/dashboard", follow_redirects=False)
    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith("dashboard/")
    assert client.get("/dashboard").url.path == "/dashboard/"


def test_the_page_and_its_assets_are_served_without_a_token(client: TestClient) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for src in ("app.js", "app.css"):
        assert f'"{src}"' in page.text  # relative: works behind a path prefix too
    for name, kind in FILES.items():
        response = client.get(f"/dashboard/{name}")
        assert response.status_code == 200, name
        assert kind in response.headers["content-type"], (name, response.headers["content-type"])
        assert response.content == (STATIC_DIR / name).read_bytes()
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/dashboard/missing.js").status_code == 404


def test_the_data_behind_the_dashboard_still_needs_a_token(idle_api: Api) -> None:
    for path in ("/api/v1/monitoring/tasks", "/api/v1/monitoring/queues"):
        assert idle_api.client.get(path).status_code == 401
        assert idle_api.client.get(path, headers=idle_api.headers()).status_code == 200


def test_the_static_files_reference_no_external_url() -> None:
    names = sorted(p.name for p in STATIC_DIR.iterdir())
    assert names == sorted(FILES)
    for name in FILES:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        assert "http://" not in text, name
        assert "https://" not in text, name
        assert not re.search(r"""(src|href)\s*=\s*["']//""", text), name  # protocol-relative URLs
        assert "@import" not in text, name
        assert "innerHTML" not in text, name  # values reach the DOM through textContent/attributes only
