"""POST /api/v1/tasks/: every task type, inputs, routing, and refusal of bad input before any write."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import assert_422, stored_files, task_count
from tests.conftest import Api, b64_png, data_url, png_bytes

IMG = "data:image/png;base64," + b64_png()
URL = "https://images.example.com/a.png"

ALL_TYPES: dict[str, dict[str, Any]] = {
    "GENERATION": {
        "prompt": "red dress",
        "width": 512,
        "height": 768,
        "seed": 7,
        "reference_image_data": IMG,
    },
    "EDITING": {
        "prompt": "make it blue",
        "base_image": IMG,
        "reference_images": [URL],
        "width": 64,
        "height": 64,
    },
    "REFINE": {"base_image_url": URL, "upscale_factor": 2},
    "EXPERIMENTAL_FAL": {"fal_app_id": "fal-ai/flux/dev", "fal_parameters": {"steps": 4}},
    "VIDEO_GENERATION": {"prompt": "turn around", "input_image_url": URL, "duration_seconds": 5},
    "LLM_INTERACTION": {"prompt": "describe", "system_prompt": "be brief", "input_images": [IMG]},
    "BACKGROUND_REMOVAL": {"input_image_paths": [IMG, URL]},
    "DETAIL_ENHANCER": {"base_image": IMG, "reference_image": URL, "detail_label": "logos"},
    "BACKGROUND_FIX": {"base_image": IMG, "palette_image": IMG},
    "IMAGE_ADJUSTER": {"input_image": IMG, "aspect_ratio": "4:5"},
    "FACE_ENHANCER": {"input_image": URL},
}
PUBLIC_FIELD = {
    "GENERATION": ("reference_image_path", True),
    "EDITING": ("base_image_path", True),
    "REFINE": ("base_image_url", False),
    "VIDEO_GENERATION": ("input_image_path", False),
    "DETAIL_ENHANCER": ("base_image_path", True),
    "BACKGROUND_FIX": ("palette_image_path", True),
    "IMAGE_ADJUSTER": ("input_image_path", True),
    "FACE_ENHANCER": ("input_image_path", False),
}


@pytest.mark.parametrize("task_type", sorted(ALL_TYPES))
def test_every_task_type_is_accepted(idle_api: Api, task_type: str) -> None:
    task = idle_api.create({"task_type": task_type, **ALL_TYPES[task_type]})
    assert task["task_type"] == task_type
    assert task["status"] == "PENDING"
    assert task["progress"] == 0.0 and task["retry_count"] == 0 and task["errors"] == []
    assert task["created_at"] and task["updated_at"] and task["started_at"] is None
    assert task["request_id"] == task["id"]
    assert task["status_url"].endswith(f"/v2/status/{task['id']}")
    assert task["celery_task_id"]
    if task_type in PUBLIC_FIELD:
        name, inline = PUBLIC_FIELD[task_type]
        value = task[name]
        assert value.startswith(f"{value.split('/')[0]}/{task['id']}/inputs/") if inline else value == URL


def test_create_sets_location_header_and_routing(idle_api: Api) -> None:
    response = idle_api.client.post(
        "/api/v1/tasks/",
        json={"task_type": "IMAGE_ADJUSTER", **ALL_TYPES["IMAGE_ADJUSTER"]},
        headers=idle_api.headers(),
    )
    task = response.json()
    assert response.headers["location"] == task["status_url"]
    assert (task["provider_type"], task["queue_name"], task["priority"]) == ("LOCAL", "local", 0)
    assert task["aspect_ratio"] == pytest.approx(0.8)
    assert task["mode"] == "auto" and task["resampling"] == "lanczos" and task["tolerance"] == 0.0


@pytest.mark.parametrize(
    ("extra", "queue", "provider"),
    [
        ({}, "inference", None),
        ({"provider_type": "FASHN_STANDARD"}, "fashn", "FASHN_STANDARD"),
        ({"provider_type": "VERTEX", "queue_name": "gpu-eu"}, "gpu-eu", "VERTEX"),
    ],
)
def test_queue_follows_provider_type(idle_api: Api, extra: dict[str, Any], queue: str, provider: str | None) -> None:
    body = {"task_type": "FACE_ENHANCER", "input_image": URL, **extra}
    if not extra:
        body["provider_type"] = None
    task = idle_api.create(body)
    assert task["queue_name"] == (queue if extra else "local")
    assert task["provider_type"] == (provider if extra else "LOCAL")


def test_inline_image_is_stored_and_readable(idle_api: Api) -> None:
    task = idle_api.create({"task_type": "IMAGE_ADJUSTER", "input_image": data_url((33, 17)), "aspect_ratio": 1})
    response = idle_api.client.get(f"/api/v1/storage/images/{task['input_image_path']}", headers=idle_api.headers())
    assert response.status_code == 200 and response.content == png_bytes((33, 17))


def test_storage_path_input_must_exist(idle_api: Api) -> None:
    upload = idle_api.client.post(
        "/api/v1/storage/images/in/shoe.png",
        files={"file": ("shoe.png", png_bytes(), "image/png")},
        headers=idle_api.headers(),
    )
    assert upload.status_code == 200
    task = idle_api.create({"task_type": "IMAGE_ADJUSTER", "input_image": "in/shoe.png", "aspect_ratio": 1})
    assert task["input_image_path"] == "in/shoe.png"
    missing = idle_api.client.post(
        "/api/v1/tasks/",
        json={"task_type": "IMAGE_ADJUSTER", "input_image": "in/nope.png", "aspect_ratio": 1},
        headers=idle_api.headers(),
    )
    assert_422(missing, "input_image")


BAD_BODIES: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    ("unknown task_type", {"task_type": "TELEPORT", "prompt": "x"}, ("body",)),
    ("missing task_type", {"prompt": "x"}, ()),
    ("wrong type", {"task_type": "GENERATION", "prompt": "x", "width": "wide"}, ("width",)),
    ("missing prompt", {"task_type": "GENERATION"}, ("prompt",)),
    ("unknown field", {"task_type": "GENERATION", "prompt": "x", "colour": "red"}, ("colour",)),
    ("priority out of range", {"task_type": "GENERATION", "prompt": "x", "priority": 1000}, ("priority",)),
    ("bad provider", {"task_type": "GENERATION", "prompt": "x", "provider_type": "NOPE"}, ("provider_type",)),
    (
        "bad provider config",
        {
            "task_type": "GENERATION",
            "prompt": "x",
            "provider_type": "VERTEX",
            "provider_config": {"temperature": 9},
        },
        ("provider_config", "temperature"),
    ),
    (
        "config typo",
        {
            "task_type": "GENERATION",
            "prompt": "x",
            "provider_type": "VERTEX",
            "provider_config": {"temprature": 1},
        },
        ("provider_config",),
    ),
    (
        "fallback config without type",
        {"task_type": "GENERATION", "prompt": "x", "fallback_provider_config": {"a": 1}},
        ("fallback_provider_config",),
    ),
    (
        "bad max_retries",
        {"task_type": "GENERATION", "prompt": "x", "config": {"max_retries": "many"}},
        ("config",),
    ),
    ("half target", {"task_type": "IMAGE_ADJUSTER", "input_image": IMG, "target_width": 10}, ()),
    ("no target", {"task_type": "IMAGE_ADJUSTER", "input_image": IMG}, ()),
    (
        "bad ratio",
        {"task_type": "IMAGE_ADJUSTER", "input_image": IMG, "aspect_ratio": "wide"},
        ("aspect_ratio",),
    ),
    (
        "bad mode",
        {"task_type": "IMAGE_ADJUSTER", "input_image": IMG, "aspect_ratio": 1, "mode": "zoom"},
        ("mode",),
    ),
    (
        "margins sum",
        {
            "task_type": "IMAGE_ADJUSTER",
            "input_image": IMG,
            "aspect_ratio": 1,
            "margin_top": 0.6,
            "margin_bottom": 0.5,
        },
        (),
    ),
    (
        "video too long",
        {"task_type": "VIDEO_GENERATION", "prompt": "x", "duration_seconds": 61},
        ("duration_seconds",),
    ),
    (
        "bad base64",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "data:image/png;base64,@@@@", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "not an image",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "data:text/plain;base64,aGVsbG8=", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "undecodable image",
        {
            "task_type": "IMAGE_ADJUSTER",
            "input_image": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB",
            "aspect_ratio": 1,
        },
        ("input_image",),
    ),
    (
        "loopback url",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "http://127.0.0.1/a.png", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "metadata url",
        {"task_type": "FACE_ENHANCER", "input_image": "http://169.254.169.254/latest"},
        ("input_image",),
    ),
    (
        "private url",
        {"task_type": "BACKGROUND_REMOVAL", "input_image_paths": [URL, "http://10.0.0.5/x.png"]},
        ("input_image_paths", 1),
    ),
    (
        "localhost url",
        {"task_type": "REFINE", "base_image_url": "http://localhost:8000/x.png"},
        ("base_image_url",),
    ),
    (
        "file url",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "file:///etc/passwd", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "traversal",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "../../etc/passwd", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "absolute path",
        {"task_type": "IMAGE_ADJUSTER", "input_image": "/etc/passwd", "aspect_ratio": 1},
        ("input_image",),
    ),
    (
        "webhook scheme",
        {"task_type": "GENERATION", "prompt": "x", "webhook_url": "ftp://x"},
        ("webhook_url",),
    ),
]


@pytest.mark.parametrize(("case", "body", "loc"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_is_refused_before_anything_is_written(
    idle_api: Api, case: str, body: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    response = idle_api.client.post("/api/v1/tasks/", json=body, headers=idle_api.headers())
    assert_422(response, *loc)
    assert task_count(idle_api) == 0
    assert stored_files(idle_api) == []


def test_unknown_task_type_names_the_valid_ones(idle_api: Api) -> None:
    response = idle_api.client.post("/api/v1/tasks/", json={"task_type": "TELEPORT"}, headers=idle_api.headers())
    message = assert_422(response)["detail"][0]["msg"]
    assert "TELEPORT" in message and "IMAGE_ADJUSTER" in message


def test_pixel_bomb_is_refused(app_factory: Any) -> None:
    api = app_factory(worker=False, inputs={"max_pixels": 1000})
    response = api.client.post(
        "/api/v1/tasks/",
        json={"task_type": "IMAGE_ADJUSTER", "input_image": data_url((100, 100)), "aspect_ratio": 1},
        headers=api.headers(),
    )
    body = assert_422(response, "input_image")
    assert body["detail"][0]["type"] == "input_too_large"
    assert task_count(api) == 0 and stored_files(api) == []


def test_oversize_body_is_refused(app_factory: Any) -> None:
    api = app_factory(worker=False, inputs={"max_bytes": 1000}, storage={"max_upload_bytes": 1000})
    response = api.client.post(
        "/api/v1/tasks/",
        json={"task_type": "IMAGE_ADJUSTER", "input_image": "A" * 5_000_000, "aspect_ratio": 1},
        headers=api.headers(),
    )
    assert response.status_code == 413
    assert task_count(api) == 0


def test_private_url_allowed_when_allow_listed(app_factory: Any) -> None:
    api = app_factory(worker=False, inputs={"allow_private_networks": ["10.0.0.0/8"]})
    task = api.create({"task_type": "FACE_ENHANCER", "input_image": "http://10.1.2.3/face.png"})
    assert task["input_image_path"] == "http://10.1.2.3/face.png"


def test_auth_is_required(idle_api: Api) -> None:
    response = idle_api.client.post("/api/v1/tasks/", json={"task_type": "GENERATION", "prompt": "x"})
    assert response.status_code == 401
    assert "bearer" in response.json()["detail"].lower()
    bad = idle_api.client.get("/api/v1/tasks/", headers={"Authorization": "Bearer not.a.jwt"})
    assert bad.status_code == 401
