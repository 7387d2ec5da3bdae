"""BACKGROUND_REMOVAL and BACKGROUND_FIX on the LOCAL provider, through the API and the real worker."""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from atelier.providers.local.background_removal import ModelNotAvailableError, check_model
from atelier.settings import Settings
from tests.conftest import Api

BACKDROP = (235, 235, 235)
SUBJECT = (200, 30, 30)


def _model_ready() -> bool:
    os.environ.setdefault("U2NET_HOME", str(Settings().models_root / "rembg"))  # as the runtime does
    if any(importlib.util.find_spec(name) is None for name in ("rembg", "onnxruntime")):
        return False
    try:
        check_model("u2netp")
    except ModelNotAvailableError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _model_ready() and os.environ.get("CI") != "true",
    reason="rembg/onnxruntime or the u2netp weights are missing (make install provides them)",
)


def disc_photo() -> tuple[bytes, np.ndarray]:
    """A red disc on a light backdrop (PNG) and its true mask."""
    image = Image.new("RGB", (256, 256), BACKDROP)
    ImageDraw.Draw(image).ellipse((64, 64, 192, 192), fill=SUBJECT)
    truth = np.zeros((256, 256), dtype=bool)
    yy, xx = np.mgrid[0:256, 0:256]
    truth[(yy - 128) ** 2 + (xx - 128) ** 2 <= 64**2] = True
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), truth


def upload(api: Api, path: str, data: bytes) -> None:
    """Store an input."""
    response = api.client.post(
        f"/api/v1/storage/images/{path}", files={"file": ("x.png", data, "image/png")}, headers=api.headers()
    )
    assert response.status_code == 200


def fetch(api: Api, path: str) -> Image.Image:
    """Load a stored result."""
    response = api.client.get(f"/api/v1/storage/images/{path}", headers=api.headers())
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def test_background_removal_cuts_out_every_input(api: Api) -> None:
    photo, truth = disc_photo()
    upload(api, "in/disc.png", photo)
    body = {"task_type": "BACKGROUND_REMOVAL", "input_image_paths": ["in/disc.png", "in/disc.png"]}
    task = api.wait(api.create(body)["id"], timeout=180)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["provider_type"] == "LOCAL" and task["provider_config"]["rembg_model"] == "u2netp"
    assert len(task["result_image_paths"]) == 2
    for path in task["result_image_paths"]:
        cutout = fetch(api, path)
        assert cutout.mode == "RGBA" and cutout.size == (256, 256)
        alpha = np.asarray(cutout.getchannel("A")) > 127
        iou = (alpha & truth).sum() / (alpha | truth).sum()
        assert iou >= 0.95


def test_missing_model_fails_truthfully(api: Api) -> None:
    photo, _ = disc_photo()
    upload(api, "in/disc.png", photo)
    body = {
        "task_type": "BACKGROUND_REMOVAL",
        "input_image_paths": ["in/disc.png"],
        "provider_config": {"rembg_model": "u2net"},
    }
    task = api.wait(api.create(body)["id"], timeout=180)
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_NOT_AVAILABLE"
    assert "u2net.onnx" in task["errors"][-1]
    assert task["retry_count"] == 0


@pytest.mark.parametrize("strategy", ["REPLACE", "COLOR_SHIFT", "HARMONIZE"])
def test_background_fix_recolours_the_backdrop_only(api: Api, strategy: str) -> None:
    photo, _ = disc_photo()
    upload(api, "in/disc.png", photo)
    palette = io.BytesIO()
    Image.new("RGB", (32, 32), (225, 205, 180)).save(palette, format="PNG")
    upload(api, "in/palette.png", palette.getvalue())
    body = {
        "task_type": "BACKGROUND_FIX",
        "base_image": "in/disc.png",
        "palette_image": "in/palette.png",
        "strategy": strategy,
        "edge_blur_sigma": 3.0,
    }
    task = api.wait(api.create(body)["id"], timeout=180)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["strategy"] == strategy and task["edge_blur_sigma"] == 3.0
    result = fetch(api, task["result_image_path"]).convert("RGB")
    corner = result.getpixel((5, 5))
    assert all(abs(c - t) <= 3 for c, t in zip(corner, (225, 205, 180), strict=True)), corner  # type: ignore[arg-type]
    centre = result.getpixel((128, 128))
    drift = [abs(c - s) for c, s in zip(centre, SUBJECT, strict=True)]  # type: ignore[arg-type]
    if strategy == "HARMONIZE":  # the subject takes 10 % of the backdrop's shift
        assert 1 <= max(drift) <= 6, centre
    else:  # the model's mask is soft (≈254 at the centre): at most a unit of rounding leaks in
        assert max(drift) <= 2, centre
