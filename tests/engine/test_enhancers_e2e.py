"""FACE_ENHANCER and DETAIL_ENHANCER on the LOCAL provider, through the API and the real worker."""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tests.conftest import Api

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("cv2", "skimage")) and os.environ.get("CI") != "true",
    reason="OpenCV/scikit-image (the ml extra) are not installed",
)


def upload(api: Api, path: str, image: Image.Image) -> None:
    """Store an input as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    response = api.client.post(
        f"/api/v1/storage/images/{path}",
        files={"file": ("x.png", buffer.getvalue(), "image/png")},
        headers=api.headers(),
    )
    assert response.status_code == 200


def test_face_enhancer_on_a_real_portrait(api: Api) -> None:
    from skimage import data

    portrait = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]
    upload(api, "in/astronaut.png", portrait)
    task = api.wait(api.create({"task_type": "FACE_ENHANCER", "input_image": "in/astronaut.png"})["id"], timeout=180)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["face_detected"] is True and task["fallback_used"] is False
    assert task["attempts_used"] >= 1
    assert 0.0 < task["final_ssim_score"] <= 1.0
    assert task["final_lpips_score"] is None and task["final_dists_score"] is None  # no scorer: never invented
    response = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
    result = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    original = np.asarray(portrait, dtype=np.int16)
    assert result.shape == original.shape
    assert np.abs(result[90:140, 200:250] - original[90:140, 200:250]).mean() > 0.5  # the face changed
    assert np.array_equal(result[400:, :100], original[400:, :100])  # far from it nothing did


def test_face_enhancer_without_a_face_keeps_the_image(api: Api) -> None:
    upload(api, "in/wall.png", Image.new("RGB", (200, 150), (120, 130, 140)))
    task = api.wait(api.create({"task_type": "FACE_ENHANCER", "input_image": "in/wall.png"})["id"], timeout=180)
    assert task["status"] == "COMPLETED"
    assert task["face_detected"] is False and task["fallback_used"] is True and task["attempts_used"] == 0


def _logo() -> Image.Image:
    logo = Image.new("RGB", (48, 36), (250, 250, 250))
    draw = ImageDraw.Draw(logo)
    for i in range(0, 48, 8):
        draw.rectangle((i, 0, i + 3, 35), fill=(20, 20, 160))
    draw.ellipse((12, 6, 36, 30), outline=(200, 20, 20), width=3)
    return logo


def test_detail_enhancer_finds_and_restores_the_detail(api: Api) -> None:
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(90, 140, (240, 320, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    degraded = _logo().filter(ImageFilter.GaussianBlur(2.5))
    base.paste(degraded, (200, 120))
    upload(api, "in/shirt.png", base)
    upload(api, "in/logo.png", _logo())
    body = {
        "task_type": "DETAIL_ENHANCER",
        "base_image": "in/shirt.png",
        "reference_image": "in/logo.png",
        "detail_label": "logos",
    }
    task = api.wait(api.create(body)["id"], timeout=180)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["fallback_used"] is False and task["detail_label"] == "logos"
    left, top, right, bottom = task["detail_location"]
    assert abs(left - 200) <= 3 and abs(top - 120) <= 3 and abs(right - 248) <= 3 and abs(bottom - 156) <= 3
    response = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
    restored = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=float)
    sharp = np.asarray(_logo(), dtype=float)[8:28, 8:40]  # the interior, where the blend is complete

    def error(pixels: np.ndarray) -> float:
        return float(np.abs(pixels[128:148, 208:240] - sharp).mean())

    assert error(restored) < 0.5 * error(np.asarray(base, dtype=float))  # the sharp detail is back


def test_detail_enhancer_falls_back_when_the_detail_is_absent(api: Api) -> None:
    rng = np.random.default_rng(3)
    upload(api, "in/plain.png", Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)))
    upload(api, "in/logo.png", _logo())
    body = {"task_type": "DETAIL_ENHANCER", "base_image": "in/plain.png", "reference_image": "in/logo.png"}
    task = api.wait(api.create(body)["id"], timeout=180)
    assert task["status"] == "COMPLETED"
    assert task["fallback_used"] is True and task["detail_location"] is None
