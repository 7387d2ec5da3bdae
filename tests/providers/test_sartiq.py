"""Sartiq Ultimate refiner / face fixer / garment fixer against a fal-queue image-to-image fake.

The fake's answers really derive from what it receives (a mild sharpen + brightness lift, or noise for "drift"),
so these tests check the local half for real: tiling, gating, retries, colour matching, blending and protection.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from skimage import data

from atelier.providers.local.face_enhancer import detect_faces, expand_box
from atelier.providers.local.tiling import plan_grid
from atelier.providers.remote import quality
from atelier.providers.remote.sartiq import split_box
from tests.conftest import Api, AppFactory
from tests.fakes.img2img import Img2ImgFake, create_img2img_app
from tests.fakes.server import serve_fake
from tests.providers.conftest import cancel, remote_api, service, storage_bytes, task_row, until

KEY = "fal-test-key"
APP = "sartiq-test/img2img/v1"


@pytest.fixture
def fake() -> Iterator[Img2ImgFake]:
    with serve_fake(Img2ImgFake(key=KEY), create_img2img_app) as state:
        yield state


def sartiq_api(app_factory: AppFactory, fake: Img2ImgFake, **kwargs: Any) -> Api:
    return remote_api(app_factory, fal=service(fake.base_url, KEY), sartiq_fal_app_id=APP, **kwargs)


def texture(width: int = 192, height: int = 128, seed: int = 0) -> NDArray[np.uint8]:
    """A smooth, textured, face-free test picture (gradients, waves, a little grain)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 80 + 0.6 * xx + 30 * np.sin(yy / 6.0)
    g = 60 + 0.5 * yy + 25 * np.cos(xx / 9.0)
    b = 150 + 40 * np.sin((xx + yy) / 14.0)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 2.0, (height, width, 3))
    return np.asarray(np.clip(rgb, 0, 255), dtype=np.uint8)


def head() -> NDArray[np.uint8]:
    """A 256 x 192 crop of scikit-image's astronaut around her face (detect_faces finds one)."""
    astronaut = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]
    return np.asarray(astronaut.crop((100, 0, 356, 192)), dtype=np.uint8)


def data_url_of(pixels: NDArray[np.uint8]) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def result_pixels(api: Api, task: dict[str, Any]) -> NDArray[np.uint8]:
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def refine(image: NDArray[np.uint8], **config: Any) -> dict[str, Any]:
    return {
        "task_type": "REFINE",
        "base_image_url": data_url_of(image),
        "upscale_prompt": "crisp studio photo",
        "upscale_denoise": 0.4,
        "upscale_seed": 11,
        "provider_type": "SARTIQ_ULTIMATE_REFINER",
        "provider_config": {"feather_px": 8, **config},
    }


def task_data(api: Api, task_id: str) -> dict[str, Any]:
    """The task's stored fields (outputs the public schema does not show included)."""
    return dict(task_row(api, task_id).task_data)


def diff(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Per-pixel mean absolute difference over the channels."""
    return np.asarray(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=-1), dtype=np.float64)


# ------------------------------------------------------------------------------------------ refiner


def test_refiner_tiles_refines_and_blends_without_seams(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = texture()
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(image, num_tiles=4, ssim_threshold=0.5))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    grid = plan_grid(192, 128, 4, 8)
    assert fake.submits == len(grid.tiles) == 4
    assert sorted(fake.sizes) == sorted((r - left, b - t) for left, t, r, b in grid.tiles)
    assert all(args == {"prompt": "crisp studio photo", "strength": 0.4, "seed": 11} for args in fake.arguments())
    assert {job.app_id for job in fake.jobs.values()} == {APP}

    out = result_pixels(api, task)
    assert out.shape == image.shape
    d = diff(out, image)
    assert 0.2 < d.mean() < 4.0  # refined: changed, but still the same picture
    assert quality.ssim(image, out) > 0.9
    # Around the tile borders (the cuts and the bands the tiles share) the result is as close to the input as
    # anywhere else.
    band = np.zeros(d.shape, dtype=bool)
    band[:, 96 - 10 : 96 + 10] = True
    band[64 - 10 : 64 + 10, :] = True
    assert d[band].mean() < 1.5 * d[~band].mean() + 0.5

    row = task_data(api, task["id"])
    assert row["tiles"] == 4 and row["tiles_kept_original"] == 0 and row["tile_retries"] == 0
    assert 0.9 < row["min_ssim"] < 1.0
    assert row["faces_protected"] == 0
    assert len(row["fal_request_ids"]) == 4 and set(row["fal_request_ids"]) == set(fake.jobs)
    assert task["fal_app_id"] == APP
    assert all(KEY not in str(r) for r in task["service_requests"])
    assert sum(1 for r in task["service_requests"] if r["method"] == "POST") == 4


def test_tiles_refined_differently_fade_into_each_other(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = texture()
    fake.script = ["ok", "strong"]  # left tile mildly, right tile strongly sharpened
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(image, num_tiles=2, max_workers=1))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert plan_grid(192, 128, 2, 8).tiles == [(0, 0, 104, 128), (88, 0, 192, 128)]
    change = diff(result_pixels(api, task), image).mean(axis=0)  # how much each column changed
    left, right = change[20:70].mean(), change[120:170].mean()
    assert right - left > 2.0
    # Pasted tiles would jump by the whole difference at x = 88; blended ones ramp over the 16 shared columns.
    assert np.abs(np.diff(change[70:120])).max() < 0.25 * (right - left)


def test_refiner_upscales_to_the_target_before_tiling(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    small = texture(96, 64)
    api = sartiq_api(app_factory, fake)
    body = refine(small, num_tiles=2) | {"upscale_factor": 2}
    fake.script = ["double", "double"]  # the app answers at another size: resized back to the tile
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    out = result_pixels(api, task)
    assert out.shape == (128, 192, 3)
    upscaled = np.asarray(Image.fromarray(small).resize((192, 128), Image.Resampling.LANCZOS), dtype=np.uint8)
    assert diff(out, upscaled).mean() < 5.0
    assert sum(w * h for w, h in fake.sizes) >= 192 * 128  # the tiles come from the upscaled image

    body = refine(small, num_tiles=1) | {"upscale_enabled": True, "target_width": 150}
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert result_pixels(api, task).shape == (100, 150, 3)


def test_a_drifting_tile_is_retried_then_accepted(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    fake.script = ["drift", "ok"]
    api = sartiq_api(app_factory, fake)
    body = refine(texture(), num_tiles=4, ssim_threshold=0.8, max_retries=2, max_workers=1)
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert fake.submits == 5
    first, second = fake.arguments()[:2]
    assert (first["strength"], second["strength"]) == (0.4, 0.2)  # a retry asks to stay closer
    assert (first["seed"], second["seed"]) == (11, 12)
    row = task_data(api, task["id"])
    assert row["tile_retries"] == 1 and row["tiles_kept_original"] == 0
    assert row["min_ssim"] > 0.8
    assert any("attempt 1 rejected" in note for note in row["enhancement_notes"])
    assert task["retry_count"] == 0


def test_a_tile_that_never_passes_keeps_the_original_pixels_exactly(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = texture()
    fake.script = ["drift", "drift"]  # the first tile (top left), both of its attempts
    api = sartiq_api(app_factory, fake)
    body = refine(image, num_tiles=4, ssim_threshold=0.8, max_retries=1, max_workers=1)
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert fake.submits == 5
    out = result_pixels(api, task)
    # The top-left tile's own area (outside the bands it shares with its neighbours) is the input, bit for bit.
    assert np.array_equal(out[: 64 - 8, : 96 - 8], image[: 64 - 8, : 96 - 8])
    assert diff(out[72:, 104:], image[72:, 104:]).mean() > 0.2  # the other tiles were refined
    row = task_data(api, task["id"])
    assert row["tiles_kept_original"] == 1 and row["tile_retries"] == 1
    assert any("original kept" in note for note in row["enhancement_notes"])


def test_version_1_keeps_faces_untouched(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = head()
    [face] = detect_faces(Image.fromarray(image))
    left, top, right, bottom = expand_box(face, 0.2, (256, 192))
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(image, num_tiles=4, face_expand_percent=0.2, save_debug_tiles=True))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    out = result_pixels(api, task)
    assert np.array_equal(out[top:bottom, left:right], image[top:bottom, left:right])
    outside = np.ones(out.shape[:2], dtype=bool)
    outside[max(0, top - 8) : bottom + 8, max(0, left - 8) : right + 8] = False
    assert diff(out, image)[outside].mean() > 0.2
    row = task_data(api, task["id"])
    assert row["faces_protected"] == 1
    paths = row["debug_image_paths"]
    assert len(paths) == 8 and all(f"refines/{task['id']}/debug/tile_" in p for p in paths)
    before = np.asarray(Image.open(io.BytesIO(storage_bytes(api, paths[0]))).convert("RGB"))
    t_left, t_top, t_right, t_bottom = plan_grid(256, 192, 4, 8).tiles[0]
    assert np.array_equal(before, image[t_top:t_bottom, t_left:t_right])


def test_version_2_matches_histograms_and_leaves_faces_to_the_app(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = head()
    [face] = detect_faces(Image.fromarray(image))
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(image, num_tiles=4, version="2", ssim_threshold=0.6))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert fake.submits == 4
    out = result_pixels(api, task)
    left, top, right, bottom = face
    assert not np.array_equal(out[top:bottom, left:right], image[top:bottom, left:right])
    # Histogram matching undoes the fake's brightness lift: per-channel means stay with the input's.
    assert np.abs(out.reshape(-1, 3).mean(axis=0) - image.reshape(-1, 3).mean(axis=0)).max() < 1.5
    assert quality.ssim(image, out) > 0.85
    assert task_data(api, task["id"])["faces_protected"] == 0


def test_lpips_threshold_without_the_metric_fails_before_any_submit(
    app_factory: AppFactory, fake: Img2ImgFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quality, "load_metric", lambda metric: None)  # whatever this machine has installed
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(texture(), lpips_threshold=0.2))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "lpips_threshold" in task["errors"][-1] and "0 disables" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert fake.submits == 0


def test_a_failed_remote_job_retries_the_task(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    fake.script = ["fail"]
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(texture(64, 64), num_tiles=1))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "CUDA out of memory" in task["errors"][0]
    assert fake.submits == 2
    assert "fal_request_id" not in task["provider_config"]  # nothing written into the strict config


def test_rate_limited_submit_is_retried_within_the_attempt(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    fake.script = ["429"]
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(refine(texture(64, 64), num_tiles=1))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert fake.submits == 1
    assert 429 in [r.get("status") for r in task["service_requests"]]


def test_cancelling_stops_the_tiles_and_cancels_the_remote_requests(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    fake.script = ["slow"] * 4
    api = sartiq_api(app_factory, fake)
    task_id = api.create(refine(texture(), num_tiles=4))["id"]
    until(lambda: fake.submits == 4, what="every tile submitted")
    cancel(api, task_id)
    task = api.wait(task_id)
    assert task["status"] == "CANCELLED"
    until(lambda: fake.cancels == 4, what="remote requests cancelled")


# ------------------------------------------------------------------------------------------ face fixer


def face_task(image: NDArray[np.uint8], **config: Any) -> dict[str, Any]:
    return {
        "task_type": "FACE_ENHANCER",
        "input_image": data_url_of(image),
        "provider_type": "SARTIQ_ULTIMATE_FACE_FIXER",
        "provider_config": config,
    }


def test_face_fixer_refines_the_face_only(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = head()
    [face] = detect_faces(Image.fromarray(image))
    left, top, right, bottom = expand_box(face, 0.5, (256, 192))
    api = sartiq_api(app_factory, fake)
    body = face_task(image, ssim_threshold=0.6, feather_px=8, save_debug_images=True)
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["face_detected"] is True and task["fallback_used"] is False
    assert task["attempts_used"] == 1
    assert 0.6 <= task["final_ssim_score"] < 1.0
    assert task["final_lpips_score"] is None and task["final_dists_score"] is None
    assert task["faces"] == [list(face)]
    assert fake.submits == 1 and fake.sizes == [(right - left, bottom - top)]
    assert fake.arguments()[0]["prompt"] == "a detailed, natural, photorealistic face"

    out = result_pixels(api, task)
    outside = np.ones(out.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(out[outside], image[outside])  # nothing outside the face region changes
    cx, cy = (left + right) // 2, (top + bottom) // 2
    assert diff(out[cy - 10 : cy + 10, cx - 10 : cx + 10], image[cy - 10 : cy + 10, cx - 10 : cx + 10]).mean() > 0.5
    assert np.array_equal(out[top, left], image[top, left])  # the ellipse's corner is feathered to the original
    assert len(task_data(api, task["id"])["debug_image_paths"]) == 2


def test_face_fixer_keeps_the_original_face_when_no_attempt_passes(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = head()
    fake.script = ["drift", "drift"]
    api = sartiq_api(app_factory, fake)
    task = api.wait(api.create(face_task(image, ssim_threshold=0.8, max_retries=1))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["fallback_used"] is True and task["attempts_used"] == 2
    assert task["final_ssim_score"] == 1.0
    assert np.array_equal(result_pixels(api, task), image)


def test_face_fixer_without_a_face_returns_the_input_unchanged(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    image = texture(96, 64)
    api = sartiq_api(app_factory, fake)
    body = face_task(image, face_prompt="a face")
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["face_detected"] is False and task["fallback_used"] is True
    assert task["attempts_used"] == 0 and task["final_ssim_score"] is None
    assert storage_bytes(api, task["result_image_path"]) == base64.b64decode(body["input_image"].split(",", 1)[1])
    assert fake.submits == 0


# ------------------------------------------------------------------------------------------ garment fixer


def garment_scene() -> tuple[NDArray[np.uint8], NDArray[np.uint8], tuple[int, int, int, int]]:
    """A 240 x 160 scene with an elongated printed band (180 x 40) and the band itself as the reference."""
    scene = texture(240, 160, seed=3)
    band = Image.new("RGB", (180, 40), (230, 225, 210))
    draw = ImageDraw.Draw(band)
    for i in range(0, 180, 12):
        draw.rectangle((i, 6, i + 5, 33), fill=(30 + i, 60, 140))
        draw.ellipse((i + 6, 14, i + 11, 25), fill=(200, 40, 40))
    pixels = np.asarray(band, dtype=np.uint8)
    box = (30, 70, 210, 110)
    scene[box[1] : box[3], box[0] : box[2]] = pixels
    return scene, pixels, box


def test_garment_fixer_splits_an_elongated_region_in_two(app_factory: AppFactory, fake: Img2ImgFake) -> None:
    scene, reference, box = garment_scene()
    api = sartiq_api(app_factory, fake)
    body = {
        "task_type": "DETAIL_ENHANCER",
        "base_image": data_url_of(scene),
        "reference_image": data_url_of(reference),
        "detail_label": "striped waistband",
        "provider_type": "SARTIQ_ULTIMATE_GARMENT_FIXER",
        "provider_config": {"bbox_expand_percent": 0.1, "feather_px": 6, "split_threshold": 2.0, "ssim_threshold": 0.5},
    }
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["fallback_used"] is False
    assert task["detail_location"] == list(box)
    assert task["match_score"] > 0.95

    left, top, right, bottom = expand_box(box, 0.1, (240, 160))
    tiles = split_box(right - left, bottom - top, 2.0, 6)
    assert len(tiles) == 2
    assert fake.submits == 2
    assert sorted(fake.sizes) == sorted((r - x, b - y) for x, y, r, b in tiles)
    assert all("striped waistband" in args["prompt"] for args in fake.arguments())

    out = result_pixels(api, task)
    outside = np.ones(out.shape[:2], dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(out[outside], scene[outside])
    inner = (slice(top + 8, bottom - 8), slice(left + 8, right - 8))
    assert diff(out[inner], scene[inner]).mean() > 0.5
    assert 0.5 < task_data(api, task["id"])["final_ssim_score"] < 1.0


def test_garment_fixer_returns_the_base_unchanged_when_nothing_matches(
    app_factory: AppFactory, fake: Img2ImgFake
) -> None:
    scene = texture(160, 120, seed=5)
    reference = np.random.default_rng(9).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    api = sartiq_api(app_factory, fake)
    body = {
        "task_type": "DETAIL_ENHANCER",
        "base_image": data_url_of(scene),
        "reference_image": data_url_of(reference),
        "provider_type": "SARTIQ_ULTIMATE_GARMENT_FIXER",
    }
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["fallback_used"] is True and task["detail_location"] is None
    assert "not located" in task["enhancement_notes"][0]
    assert np.array_equal(result_pixels(api, task), scene)
    assert fake.submits == 0


def test_split_box_only_splits_elongated_regions() -> None:
    assert split_box(100, 60, 2.0, 8) == [(0, 0, 100, 60)]
    assert split_box(200, 60, 2.0, 8) == [(0, 0, 108, 60), (92, 0, 200, 60)]
    assert split_box(40, 130, 2.0, 100) == [(0, 0, 40, 97), (0, 33, 40, 130)]  # overlap clamped: tiles stay halves
    assert split_box(2, 1, 1.5, 4) == [(0, 0, 1, 1), (1, 0, 2, 1)]
