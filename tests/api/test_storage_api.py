"""Storage endpoints: save, list, get, head, delete; tenant scoping, traversal and upload bounds."""

from __future__ import annotations

from typing import Any

import pytest

from atelier.core.auth import Role
from tests.api.helpers import stored_files
from tests.conftest import Api, png_bytes

URL = "/api/v1/storage/images/"


def upload(api: Api, path: str, data: bytes, tenant: str = "acme", name: str = "f.png") -> Any:
    """POST a multipart upload."""
    return api.client.post(URL + path, files={"file": (name, data, "image/png")}, headers=api.headers(tenant))


def test_save_get_head_delete(idle_api: Api) -> None:
    data = png_bytes((12, 9))
    saved = upload(idle_api, "products/shoe.png", data)
    assert saved.status_code == 200, saved.text
    assert saved.json()["path"] == "products/shoe.png" and saved.json()["size"] == len(data)
    got = idle_api.client.get(URL + "products/shoe.png", headers=idle_api.headers())
    assert got.status_code == 200 and got.content == data and got.headers["content-type"] == "image/png"
    head = idle_api.client.head(URL + "products/shoe.png", headers=idle_api.headers())
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    deleted = idle_api.client.delete(URL + "products/shoe.png", headers=idle_api.headers())
    assert deleted.json() == {"path": "products/shoe.png", "deleted": True}
    assert idle_api.client.head(URL + "products/shoe.png", headers=idle_api.headers()).status_code == 404
    assert idle_api.client.get(URL + "products/shoe.png", headers=idle_api.headers()).status_code == 404
    assert idle_api.client.delete(URL + "products/shoe.png", headers=idle_api.headers()).status_code == 404


def test_list_by_prefix_with_pagination(idle_api: Api) -> None:
    for path in ["a/1.png", "a/2.png", "a/3.png", "b/1.png"]:
        assert upload(idle_api, path, png_bytes()).status_code == 200
    h = idle_api.headers()
    page1 = idle_api.client.get(URL.rstrip("/") + "?prefix=a/&limit=2", headers=h).json()
    assert [i["path"] for i in page1["items"]] == ["a/1.png", "a/2.png"]
    assert page1["next_start_after"] == "a/2.png"
    page2 = idle_api.client.get(URL.rstrip("/") + "?prefix=a/&limit=2&start_after=a/2.png", headers=h).json()
    assert [i["path"] for i in page2["items"]] == ["a/3.png"] and page2["next_start_after"] is None
    everything = idle_api.client.get(URL.rstrip("/"), headers=h).json()
    assert everything["count"] == 4


def test_tenants_are_isolated(idle_api: Api) -> None:
    upload(idle_api, "secret.png", png_bytes())
    other = idle_api.headers("globex")
    assert idle_api.client.get(URL + "secret.png", headers=other).status_code == 404
    assert idle_api.client.head(URL + "secret.png", headers=other).status_code == 404
    assert idle_api.client.delete(URL + "secret.png", headers=other).status_code == 404
    assert idle_api.client.get(URL.rstrip("/"), headers=other).json()["items"] == []
    assert idle_api.client.get(URL + "secret.png", headers=idle_api.headers()).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "../globex/secret.png",
        "a/../../globex/secret.png",
        "%2e%2e/globex/secret.png",
        "a/%2e%2e/%2e%2e/x.png",
        "..%2fglobex%2fsecret.png",
        "a\\..\\x.png",
        "%00.png",
    ],
)
def test_traversal_is_refused(idle_api: Api, path: str) -> None:
    upload(idle_api, "ok.png", png_bytes(), tenant="globex")
    for method in ("get", "delete"):
        response = idle_api.client.request(method, URL + path, headers=idle_api.headers())
        assert response.status_code in (404, 422), (method, path, response.status_code)
    assert upload(idle_api, path, png_bytes()).status_code in (404, 422)
    assert [f for f in stored_files(idle_api) if not f.startswith("tenants/globex/")] == []


def test_upload_bounds(app_factory: Any) -> None:
    api = app_factory(worker=False, storage={"max_upload_bytes": 2000}, inputs={"max_pixels": 10_000})
    assert upload(api, "big.png", png_bytes((64, 64)) + b"\0" * 3000).status_code == 413
    assert upload(api, "notes.txt", b"hello", name="notes.txt").status_code == 422
    assert upload(api, "fake.png", b"not an image at all").status_code == 422
    assert upload(api, "bomb.png", png_bytes((200, 200))).status_code == 422
    assert upload(api, "empty.png", b"").status_code == 422
    assert stored_files(api) == []


def test_viewer_cannot_write_storage(idle_api: Api) -> None:
    viewer = idle_api.headers(role=Role.VIEWER)
    response = idle_api.client.post(URL + "x.png", files={"file": ("x.png", png_bytes(), "image/png")}, headers=viewer)
    assert response.status_code == 403
    assert idle_api.client.get(URL.rstrip("/"), headers=viewer).status_code == 200


def test_storage_requires_auth(idle_api: Api) -> None:
    assert idle_api.client.get(URL.rstrip("/")).status_code == 401
    assert idle_api.client.get(URL + "x.png").status_code == 401
