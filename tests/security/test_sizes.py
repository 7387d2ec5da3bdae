"""Oversized bodies and uploads, and decompression bombs.

- any write route: a body over the request limit is a 413 (declared or streamed), before anything is parsed;
- uploads (images and LoRA files) over their own caps: 413 with nothing left behind (no file, no temp file);
- inline images over ``inputs.max_bytes``: 422 ``input_too_large``;
- a small PNG that declares a huge canvas (``inputs.max_pixels``): 422 ``input_too_large`` at create and for
  uploads, for every field that takes an image; nothing is written.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from atelier.core.auth import Role
from tests.api.helpers import assert_422, stored_files, task_count
from tests.conftest import Api, data_url, png_bytes
from tests.security import api_routes, files_under, hit_server, start_app, training_count

MAX_UPLOAD = 20_000
MAX_INPUT = 50_000
MAX_PIXELS = 1_000_000
MAX_LORA = 10_000
BODY_LIMIT = max(MAX_UPLOAD, 2 * MAX_INPUT) + 1024 * 1024  # what create_app gives the middleware
LORA_BODY_LIMIT = MAX_LORA + 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    app = start_app(
        tmp_path_factory.mktemp("security-sizes") / "data",
        storage={"max_upload_bytes": MAX_UPLOAD},
        inputs={"max_bytes": MAX_INPUT, "max_pixels": MAX_PIXELS},
        lora={"max_bytes": MAX_LORA},
    )
    try:
        yield app
    finally:
        app.close()


def state(api: Api) -> tuple[int, int, list[str], list[str]]:
    """Rows and every file of the data directory (temporary files included), the database aside."""
    disk = [p for p in files_under(api.settings.data_dir) if not p.startswith("atelier.db")]
    return task_count(api), training_count(api), stored_files(api), disk


# ------------------------------------------------------------------------------------------ request bodies


def test_every_write_route_refuses_an_oversized_body_with_413(api: Api) -> None:
    before = state(api)
    admin = api.headers(role=Role.ADMIN)
    body = b'{"pad": "' + b"x" * (max(BODY_LIMIT, LORA_BODY_LIMIT) + 1024) + b'"}'
    routes = [r for r in api_routes(api.client.app) if r.method in {"POST", "PUT", "PATCH", "DELETE"}]  # type: ignore[arg-type]
    assert len(routes) > 20
    wrong = []
    for route in routes:
        path = route.path.replace("{path:path}", "big.png")
        for name in ("{task_id}", "{workflow_id}", "{delivery_id}"):
            path = path.replace(name, "00000000-0000-4000-8000-000000000000")
        response = api.client.request(
            route.method, path, content=body, headers={**admin, "content-type": "application/json"}
        )
        if response.status_code != 413 or response.json().get("code") != "payload_too_large":
            wrong.append(f"{route.method} {route.path}: {response.status_code} {response.text[:120]}")
    assert wrong == [], "\n".join(wrong)
    assert state(api) == before


def test_a_streamed_body_without_length_is_cut_off_with_413(api: Api) -> None:
    before = state(api)

    def chunks() -> Iterator[bytes]:
        yield b'{"task_type": "IMAGE_ADJUSTER", "aspect_ratio": 1, "input_image": "'
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    response = api.client.post(
        "/api/v1/tasks/", content=chunks(), headers={**api.headers(), "content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert state(api) == before


def test_a_body_just_under_the_limit_is_parsed(api: Api) -> None:
    """Control: the 413s above are about size; a body just under the limit reaches validation (422)."""
    pad = b"x" * (BODY_LIMIT - 200)
    body = b'{"task_type": "IMAGE_ADJUSTER", "aspect_ratio": 1, "pad": "' + pad + b'"}'
    response = api.client.post(
        "/api/v1/tasks/", content=body, headers={**api.headers(), "content-type": "application/json"}
    )
    assert_422(response)


# ------------------------------------------------------------------------------------------ uploads


def test_an_image_upload_over_the_cap_is_413_and_leaves_nothing(api: Api) -> None:
    before = state(api)
    noise = Image.effect_noise((120, 120), 100).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    big = buffer.getvalue()
    assert MAX_UPLOAD < len(big) < BODY_LIMIT
    response = api.client.post(
        "/api/v1/storage/images/big.png", files={"file": ("big.png", big, "image/png")}, headers=api.headers()
    )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    huge = api.client.post(
        "/api/v1/storage/images/huge.png",
        files={"file": ("huge.png", b"\x89PNG" + b"\x00" * BODY_LIMIT, "image/png")},
        headers=api.headers(),
    )
    assert huge.status_code == 413, huge.text
    assert state(api) == before


@pytest.mark.parametrize("path", ["/api/v1/lora/upload", "/api/v1/admin/lora/upload"])
@pytest.mark.parametrize("size", [MAX_LORA + 1, LORA_BODY_LIMIT + 1])
def test_a_lora_upload_over_the_cap_is_413_and_leaves_nothing(api: Api, path: str, size: int) -> None:
    before = state(api)
    response = api.client.post(
        path,
        files={"file": ("big.bin", b"\x01" * size, "application/octet-stream")},
        data={"entity_type": "styles"},
        headers=api.headers(role=Role.ADMIN),
    )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert state(api) == before


def test_an_inline_image_over_max_bytes_is_422(api: Api) -> None:
    before = state(api)
    big = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_INPUT).decode()
    body = {"task_type": "IMAGE_ADJUSTER", "input_image": big, "aspect_ratio": 1}
    error = assert_422(api.client.post("/api/v1/tasks/", json=body, headers=api.headers()), "input_image")
    assert error["detail"][0]["type"] == "input_too_large"
    assert state(api) == before


# ------------------------------------------------------------------------------------------ bombs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def forged_png(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width``×``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_bomb() -> bytes:
    """A genuine, highly compressible PNG over MAX_PIXELS (a few KB for 2.2 M pixels)."""
    buffer = io.BytesIO()
    Image.new("L", (1500, 1500)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


BOMBS = {
    "forged_huge": forged_png(100_000, 100_000),  # 10 G pixels: also past Pillow's own bomb limit
    "forged_just_over": forged_png(1001, 1000),
    "real": real_bomb(),
}


def _url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


CREATE_CASES: dict[str, tuple[str, Any, tuple[Any, ...]]] = {
    "task_image": (
        "/api/v1/tasks/",
        lambda d: {"task_type": "IMAGE_ADJUSTER", "input_image": _url(d), "aspect_ratio": 1},
        ("body", "input_image"),
    ),
    "task_raw_base64": (
        "/api/v1/tasks/",
        lambda d: {"task_type": "BACKGROUND_REMOVAL", "input_image_paths": [base64.b64encode(d).decode()]},
        ("body", "input_image_paths", 0),
    ),
    "training_source": (
        "/api/v1/training/",
        lambda d: {"trigger_word": "sks", "source_images": [data_url((16, 16)), _url(d)]},
        ("body", "source_images", 1),
    ),
    "evaluation": (
        "/api/v1/evaluation/",
        lambda d: {"expected_framing": "full_body", "expected_view_angle": "front", "image_data": _url(d)},
        ("body", "image_data"),
    ),
}


def test_the_bombs_are_small() -> None:
    assert all(len(bomb) < MAX_UPLOAD for bomb in BOMBS.values()), {k: len(v) for k, v in BOMBS.items()}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.parametrize("case", sorted(CREATE_CASES))
def test_a_decompression_bomb_is_refused_at_create(api: Api, case: str, bomb: str) -> None:
    before = state(api)
    path, make, loc = CREATE_CASES[case]
    error = assert_422(api.client.post(path, json=make(BOMBS[bomb]), headers=api.headers()), *loc)["detail"][0]
    assert error["type"] == "input_too_large", error
    assert "pixels" in error["msg"], error
    assert state(api) == before


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_decompression_bomb_upload_is_refused(api: Api, bomb: str) -> None:
    before = state(api)
    response = api.client.post(
        "/api/v1/storage/images/bomb.png", files={"file": ("bomb.png", BOMBS[bomb], "image/png")}, headers=api.headers()
    )
    error = assert_422(response, "file")["detail"][0]
    assert error["type"] == "input_too_large" and "pixels" in error["msg"], error
    assert state(api) == before


def test_an_image_at_the_pixel_limit_is_accepted(api: Api) -> None:
    """Control: the refusals are about the pixel count, not the shape of the request."""
    response = api.client.post(
        "/api/v1/storage/images/ok.png",
        files={"file": ("ok.png", png_bytes((1000, 1000), fmt="PNG"), "image/png")},
        headers=api.headers(),
    )
    assert response.status_code == 200, response.text
    assert api.client.delete("/api/v1/storage/images/ok.png", headers=api.headers()).status_code == 200


# ------------------------------------------------------------------------------------------ fetched at run time


def test_a_fetched_bomb_or_oversized_image_fails_the_task(tmp_path_factory: pytest.TempPathFactory) -> None:
    """URLs are fetched by the worker: the same byte and pixel limits apply there (FAILED, nothing stored)."""
    with hit_server("127.0.0.2") as source:
        source.bodies["/bomb.png"] = BOMBS["forged_huge"]
        source.bodies["/big.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_INPUT + 1)
        running = start_app(
            tmp_path_factory.mktemp("security-sizes-run") / "data",
            worker=True,
            inputs={"max_bytes": MAX_INPUT, "max_pixels": MAX_PIXELS, "allow_private_networks": ["127.0.0.2/32"]},
        )
        try:
            expected = {"/bomb.png": "pixels", "/big.png": "bytes", "/img.png": None}
            for path, reason in expected.items():
                task = running.create(
                    {"task_type": "IMAGE_ADJUSTER", "input_image": source.url(path), "aspect_ratio": 1}
                )
                done = running.wait(task["id"], timeout=30)
                if reason is None:  # control: a normal image from the same server is processed
                    assert done["status"] == "COMPLETED", done
                    continue
                assert done["status"] == "FAILED" and done["error_category"] == "INVALID_INPUT", done
                assert reason in " ".join(done["errors"]), done["errors"]
                assert done["result_image_path"] is None
                assert not any(task["id"] in f for f in stored_files(running)), stored_files(running)
            assert [hit for hit in source.hits if hit[0] == "GET"] == [("GET", p) for p in expected]
        finally:
            running.close()
