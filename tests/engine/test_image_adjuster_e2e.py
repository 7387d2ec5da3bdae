"""IMAGE_ADJUSTER through the API and the real worker: every mode, inputs by URL and by storage path."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import Api, AppFactory


def product_shot() -> bytes:
    """A 200×100 white photo with a red 40×60 subject whose top-left corner is at (30, 20)."""
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    image.paste((255, 0, 0), (30, 20, 70, 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(api: Api, path: str, data: bytes) -> None:
    """Put an input into the tenant's storage."""
    response = api.client.post(
        f"/api/v1/storage/images/{path}", files={"file": ("x.png", data, "image/png")}, headers=api.headers()
    )
    assert response.status_code == 200


def run(api: Api, **fields: Any) -> Image.Image:
    """Create an adjuster task on the stored shot, wait, and load its result."""
    task = api.wait(api.create({"task_type": "IMAGE_ADJUSTER", "input_image": "in/shot.png", **fields})["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    response = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
    return Image.open(io.BytesIO(response.content)).convert("RGB")


@pytest.fixture
def shot_api(api: Api) -> Api:
    """An app with the product shot stored at ``in/shot.png``."""
    upload(api, "in/shot.png", product_shot())
    return api


def red_bbox(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the strongly red pixels."""
    mask = image.point(lambda v: 0).convert("L")
    pixels = image.load()
    assert pixels is not None
    px = mask.load()
    assert px is not None
    for y in range(image.height):
        for x in range(image.width):
            r, g, b = pixels[x, y]  # type: ignore[misc]
            if r > 200 and g < 80 and b < 80:
                px[x, y] = 255
    return mask.getbbox()


def test_pad_to_square_centres_and_pads_with_background(shot_api: Api) -> None:
    out = run(shot_api, mode="pad", aspect_ratio=1)
    assert out.size == (200, 200)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # padding takes the photo's white backdrop
    assert red_bbox(out) == (30, 70, 70, 130)  # 50 px of padding above


def test_crop_positions(shot_api: Api) -> None:
    assert run(shot_api, mode="crop", aspect_ratio=1, cropping_position="left").size == (100, 100)
    assert red_bbox(run(shot_api, mode="crop", aspect_ratio=1, cropping_position="left")) == (30, 20, 70, 80)
    assert red_bbox(run(shot_api, mode="crop", aspect_ratio=1, cropping_position="right")) is None
    assert red_bbox(run(shot_api, mode="crop", aspect_ratio=1, cropping_position="center")) == (0, 20, 20, 80)


def test_auto_crops_small_differences_and_pads_large_ones(shot_api: Api) -> None:
    assert run(shot_api, mode="auto", aspect_ratio=1.95).size == (195, 100)  # 2.5 % off: crop
    assert run(shot_api, mode="auto", aspect_ratio=1.5).size == (200, 133)  # 25 % off: pad


def test_scale_to_exact_size(shot_api: Api) -> None:
    out = run(
        shot_api,
        mode="scale",
        target_width=80,
        target_height=50,
        scaling_proportions="height",
        resampling="nearest",
    )
    assert out.size == (80, 50)
    assert red_bbox(out) == (5, 10, 25, 40)  # scaled by 0.5 to 100×50, then 10 px cropped off each side


def test_margins_keep_the_subject_inside(shot_api: Api) -> None:
    out = run(
        shot_api,
        mode="pad",
        target_width=100,
        target_height=100,
        resampling="nearest",
        margin_top=0.1,
        margin_bottom=0.1,
        margin_left=0.1,
        margin_right=0.1,
    )
    left, top, right, bottom = red_bbox(out) or (0, 0, 0, 0)
    assert out.size == (100, 100)
    assert (top, 100 - bottom) == (10, 10)  # the binding (vertical) margins are exact
    assert left >= 10 and 100 - right >= 10


def test_margins_from_reference_image(shot_api: Api) -> None:
    reference = Image.new("RGB", (100, 100), "white")
    reference.paste((0, 0, 255), (25, 25, 75, 75))  # subject with 25 % margins all round
    buffer = io.BytesIO()
    reference.save(buffer, format="PNG")
    upload(shot_api, "in/ref.png", buffer.getvalue())
    out = run(shot_api, target_width=200, target_height=200, reference_image="in/ref.png", resampling="nearest")
    _left, top, _right, bottom = red_bbox(out) or (0, 0, 0, 0)
    assert (top, 200 - bottom) == (50, 50)


def test_within_tolerance_nothing_changes(shot_api: Api) -> None:
    out = run(shot_api, aspect_ratio=2.02, tolerance=0.05)
    assert out.size == (200, 100)


def test_margins_without_a_subject_fail_as_invalid_input(api: Api) -> None:
    blank = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(blank, format="PNG")
    upload(api, "in/blank.png", blank.getvalue())
    body = {
        "task_type": "IMAGE_ADJUSTER",
        "input_image": "in/blank.png",
        "aspect_ratio": 1,
        "margin_top": 0.1,
    }
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "FAILED" and task["error_category"] == "INVALID_INPUT" and task["retry_count"] == 0


class _Images(BaseHTTPRequestHandler):
    body = product_shot()
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    """A real HTTP server on loopback serving the product shot."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_url_input_is_fetched_when_allow_listed(app_factory: AppFactory, image_server: str) -> None:
    api = app_factory(inputs={"allow_private_networks": ["127.0.0.1/32"]})
    task = api.wait(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": f"{image_server}/shot.png", "aspect_ratio": 1})["id"]
    )
    assert task["status"] == "COMPLETED"
    assert task["input_image_path"] == f"{image_server}/shot.png"


def test_redirect_to_metadata_address_fails_the_task(app_factory: AppFactory, image_server: str) -> None:
    api = app_factory(inputs={"allow_private_networks": ["127.0.0.1/32"]})
    task = api.wait(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": f"{image_server}/redirect", "aspect_ratio": 1})["id"]
    )
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "169.254.169.254" in task["errors"][-1]
    assert _Images.hits[-1] == "/redirect"  # the redirect itself was fetched; its private target never was


def _photo_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG with structure (gradient + shapes) so resampling differences would show."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(200, 40, 40))
    draw.rectangle((width // 2, height // 2, width - width // 8, height - height // 8), fill=(30, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_large_jpeg_is_shrunk_on_load_with_the_same_result(api: Api) -> None:
    data = _photo_jpeg((1600, 1200))
    upload(api, "in/big.jpg", data)
    body = {
        "task_type": "IMAGE_ADJUSTER",
        "input_image": "in/big.jpg",
        "mode": "crop",
        "target_width": 200,
        "target_height": 200,
        "resampling": "bilinear",
    }
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["result_image_path"].endswith(".jpg")  # JPEG in, JPEG out
    response = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
    ours = Image.open(io.BytesIO(response.content))
    assert ours.format == "JPEG" and ours.size == (200, 200)
    full = (
        Image.open(io.BytesIO(data))
        .convert("RGB")
        .crop((200, 0, 1400, 1200))
        .resize((200, 200), Image.Resampling.BILINEAR)
    )
    diff = np.abs(np.asarray(ours.convert("RGB"), dtype=np.int16) - np.asarray(full, dtype=np.int16))
    assert diff.mean() < 4.0  # resampling noise only: the decoder skipped 15/16 of the pixels


def test_draft_request_only_when_shrinking_at_least_twice() -> None:
    from atelier.providers.local.image_adjuster import AdjustParams
    from atelier.providers.local.provider import draft_request

    crop = draft_request(AdjustParams(mode="crop", target_width=200, target_height=200))
    assert crop(1600, 1200) == (267, 200)  # the 1200² crop shrinks by 6: decode at ≥ 1/6
    assert crop(300, 300) is None  # 1.5×: not worth it
    pad = draft_request(AdjustParams(mode="pad", target_width=100, target_height=100))
    assert pad(1600, 800) == (100, 50)
    assert draft_request(AdjustParams(aspect_ratio=1.0))(1600, 1200) is None  # no exact size: keep every pixel
