"""NANO_BANANA_UPSCALER (REFINE through a Gemini image model on Vertex) with its SSIM consistency check."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from atelier.providers.remote.nano_banana import DEFAULT_PROMPT, SYSTEM_INSTRUCTION, image_size_for, wanted_size
from tests.conftest import Api, AppFactory
from tests.fakes.fal import FalFake
from tests.fakes.server import serve_fake
from tests.fakes.vertex import VertexFake, create_vertex_app, write_service_account
from tests.providers.conftest import FAL_KEY, remote_api, service, storage_bytes, task_row

MODEL = "gemini-3-pro-image-preview"


@pytest.fixture
def vertex(tmp_path: Path) -> Iterator[VertexFake]:
    with serve_fake(VertexFake(key=write_service_account(tmp_path / "keys")), create_vertex_app) as fake:
        yield fake


def upscaler_api(app_factory: AppFactory, fake: VertexFake, **kwargs: Any) -> Api:
    settings = service(
        fake.base_url,
        credentials_file=str(fake.key.path),
        token_url=fake.token_url,
        project="upscale-project",
        location="europe-west4",
    )
    return remote_api(app_factory, vertex=settings, nano_banana_model=MODEL, **kwargs)


def pattern(size: tuple[int, int] = (48, 32)) -> Image.Image:
    """A structured test photo: a gradient with shapes (so that SSIM means something)."""
    width, height = size
    ramp = np.linspace(40, 220, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    image = Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=-1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, width // 2, height // 2), fill=(250, 250, 250))
    draw.ellipse((width // 2, height // 3, width - 4, height - 3), fill=(10, 20, 30))
    return image


def as_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def refine(threshold: float = 0.8, max_retries: int = 2, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "task_type": "REFINE",
        "provider_type": "NANO_BANANA_UPSCALER",
        "provider_config": {"ssim_threshold": threshold, "max_retries": max_retries},
        "base_image_url": as_data_url(pattern()),
        "upscale_factor": 2,
    }
    body.update(extra)
    return body


def test_a_faithful_upscale_passes_the_check(app_factory: AppFactory, vertex: VertexFake) -> None:
    api = upscaler_api(app_factory, vertex)
    task = api.wait(api.create(refine(upscale_seed=11))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    row = task_row(api, task["id"])
    assert row.task_data["attempts_used"] == 1
    assert row.task_data["final_ssim_score"] >= 0.8
    [call] = vertex.requests
    assert (call.model, call.project, call.location) == (MODEL, "upscale-project", "europe-west4")
    text, image = call.body["contents"][0]["parts"]
    assert text == {"text": DEFAULT_PROMPT}
    assert image["inlineData"]["mimeType"] == "image/png"
    assert call.body["systemInstruction"]["parts"][0]["text"] == SYSTEM_INSTRUCTION
    config = call.body["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "2K"}
    assert config["seed"] == 11
    result = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"]))).convert("RGB")
    assert result.size == (96, 64)  # 2x the 48x32 input
    back = np.asarray(result.resize((48, 32), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(back - np.asarray(pattern(), dtype=np.int16)).mean() < 12
    assert task["result_image_path"].startswith(f"refines/{task['id']}/")


def test_a_drifting_answer_is_asked_again(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["drift", "ok"]
    api = upscaler_api(app_factory, vertex)
    task = api.wait(api.create(refine(upscale_seed=11))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    row = task_row(api, task["id"])
    assert row.task_data["attempts_used"] == 2
    assert row.task_data["final_ssim_score"] >= 0.8
    assert task["retry_count"] == 0
    assert [c.body["generationConfig"]["seed"] for c in vertex.requests] == [11, 12]
    assert vertex.grants == 1


def test_an_answer_that_always_drifts_fails_with_the_best_score_and_the_fallback_takes_over(
    app_factory: AppFactory, vertex: VertexFake, fal: FalFake
) -> None:
    vertex.script = ["drift"] * 4
    api = upscaler_api(app_factory, vertex, fal=service(fal.base_url, FAL_KEY))
    failed = api.wait(api.create(refine(max_retries=2))["id"])
    rescued = api.wait(api.create(refine(max_retries=0, fallback_provider_type="FAL_STANDARD"))["id"])

    assert failed["status"] == "FAILED"
    assert failed["retry_count"] == 0
    error = failed["errors"][-1]
    assert "best SSIM 0." in error and "threshold 0.8000" in error and "3 attempts" in error
    assert rescued["status"] == "COMPLETED", rescued["errors"]
    assert "consistency check failed" in rescued["errors"][0]
    assert fal.submits == 1
    assert vertex.calls == 4


def test_threshold_zero_disables_the_check(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["drift"]
    api = upscaler_api(app_factory, vertex)
    task = api.wait(api.create(refine(threshold=0.0))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    row = task_row(api, task["id"])
    assert row.task_data["attempts_used"] == 1
    assert row.task_data["final_ssim_score"] < 0.5  # still reported
    assert vertex.calls == 1


def test_target_size_prompt_and_default_prompt(app_factory: AppFactory, vertex: VertexFake) -> None:
    api = upscaler_api(app_factory, vertex)
    body = refine(upscale_factor=None, target_width=100, target_height=60, upscale_prompt="sharpen the lace")
    body["provider_config"] = {"ssim_threshold": 0.5, "default_prompt": "unused"}
    exact = api.wait(api.create(body)["id"])
    configured = refine(threshold=0.5)
    configured["provider_config"] = {"default_prompt": "upscale, keep the embroidery"}
    default = api.wait(api.create(configured)["id"])

    assert exact["status"] == default["status"] == "COMPLETED"
    result = Image.open(io.BytesIO(storage_bytes(api, exact["result_image_path"])))
    assert result.size == (100, 60)
    prompts = [c.body["contents"][0]["parts"][0]["text"] for c in vertex.requests]
    assert prompts == ["sharpen the lace", "upscale, keep the embroidery"]


def test_wanted_size_and_image_size() -> None:
    assert wanted_size({"upscale_factor": 4}, 600, 400) == (2400, 1600)
    assert wanted_size({}, 600, 400) == (1200, 800)
    assert wanted_size({"upscale_enabled": False, "upscale_factor": 4}, 600, 400) == (600, 400)
    assert wanted_size({"target_width": 300}, 600, 400) == (300, 200)
    assert wanted_size({"target_height": 100, "upscale_factor": 8}, 600, 400) == (150, 100)
    assert wanted_size({"target_width": 50, "target_height": 70}, 600, 400) == (50, 70)
    assert image_size_for((2048, 1365)) == "2K"
    assert image_size_for((2400, 1600)) == "4K"
