"""VERTEX provider (Gemini image models) against local fakes of Google's token endpoint and Vertex AI."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from atelier.providers.base import ProviderFatalError
from atelier.providers.remote.client import RemoteJobFailedError
from atelier.providers.remote.vertex import (
    DEFAULT_SYSTEM_INSTRUCTION,
    TokenCache,
    answer_image,
    nearest_aspect_ratio,
    request_body,
    supports_image_size,
    vertex_base_url,
)
from atelier.settings import VertexSettings
from atelier.tasks.enums import ErrorCategory
from tests.conftest import Api, AppFactory, data_url
from tests.fakes.fal import FalFake
from tests.fakes.server import serve_fake
from tests.fakes.vertex import RENDER_COLOUR, VertexFake, create_vertex_app, write_service_account
from tests.providers.conftest import FAL_KEY, remote_api, service, storage_bytes

KEY_PROJECT = "key-project"
LOCATION = "us-central1"


@pytest.fixture
def vertex(tmp_path: Path) -> Iterator[VertexFake]:
    with serve_fake(
        VertexFake(key=write_service_account(tmp_path / "keys", project_id=KEY_PROJECT)), create_vertex_app
    ) as fake:
        yield fake


def vertex_service(fake: VertexFake, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "credentials_file": str(fake.key.path),
        "token_url": fake.token_url,
        "location": LOCATION,
    }
    values.update(extra)
    return service(fake.base_url, **values)


def vertex_api(app_factory: AppFactory, fake: VertexFake, **kwargs: Any) -> Api:
    return remote_api(app_factory, vertex=vertex_service(fake), **kwargs)


def generation(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "task_type": "GENERATION",
        "provider_type": "VERTEX",
        "prompt": "a linen summer dress on a model, studio light",
        "width": 800,
        "height": 1000,
    }
    body.update(extra)
    return body


def decode(part: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(part["inlineData"]["data"])))


def assert_no_secrets(task: dict[str, Any], fake: VertexFake) -> None:
    text = str(task)
    assert "ya29." not in text
    assert "eyJ" not in text  # no JWT assertion
    assert fake.key.private_key_pem.splitlines()[1] not in text


# ---------------------------------------------------------------------------------------------- happy paths


def test_generation_sends_the_documented_request_and_stores_the_image(
    app_factory: AppFactory, vertex: VertexFake
) -> None:
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation(seed=7))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["provider_type"] == "VERTEX"
    [call] = vertex.requests
    assert (call.project, call.location, call.model, call.auth) == (
        KEY_PROJECT,  # no project setting: the key file's project_id
        LOCATION,
        "gemini-2.5-flash-image",
        "bearer",
    )
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": generation()["prompt"]}]}]
    assert call.body["systemInstruction"] == {"parts": [{"text": DEFAULT_SYSTEM_INSTRUCTION}]}
    assert call.body["generationConfig"] == {
        "temperature": 1.0,
        "topP": 0.95,
        "seed": 7,
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "4:5"},  # 800x1000; imageSize is left out for gemini-2.x models
    }
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    assert image.size == (51, 64)  # 4:5 at the fake's "1K"
    assert image.convert("RGB").getpixel((10, 10)) == RENDER_COLOUR
    assert task["result_image_path"].startswith(f"generations/{task['id']}/")
    assert task["service_task_id"].startswith("resp-")
    assert vertex.grants == 1
    calls = [(r["service"], r["method"], r["status"]) for r in task["service_requests"]]
    assert calls == [("vertex-oauth", "POST", 200), ("vertex", "POST", 200)]
    assert task["service_requests"][1]["url"].endswith(
        f"/v1/projects/{KEY_PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.5-flash-image:generateContent"
    )
    assert_no_secrets(task, vertex)


def test_editing_sends_base_and_references_inline_with_the_config(app_factory: AppFactory, vertex: VertexFake) -> None:
    api = remote_api(app_factory, vertex=vertex_service(vertex, project="settings-project"))
    body = {
        "task_type": "EDITING",
        "provider_type": "VERTEX",
        "provider_config": {
            "model": "gemini-3-pro-image-preview",
            "image_size": "2K",
            "aspect_ratio": "3:2",
            "system_instructions": "Keep the garment identical.",
            "temperature": 0.2,
            "top_p": 0.5,
        },
        "prompt": "change the background to a beach",
        "base_image": data_url((30, 20), "white"),
        "reference_images": [data_url((10, 10), "blue")],
    }
    task = api.wait(api.create(body)["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    [call] = vertex.requests
    assert (call.project, call.model) == ("settings-project", "gemini-3-pro-image-preview")
    text, base, reference = call.body["contents"][0]["parts"]
    assert text == {"text": "change the background to a beach"}
    assert base["inlineData"]["mimeType"] == "image/png"
    assert decode(base).size == (30, 20)
    assert decode(reference).convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    assert call.body["systemInstruction"]["parts"][0]["text"] == "Keep the garment identical."
    config = call.body["generationConfig"]
    assert (config["temperature"], config["topP"]) == (0.2, 0.5)
    assert config["imageConfig"] == {"aspectRatio": "3:2", "imageSize": "2K"}
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    assert image.size == (96, 64)  # 3:2 at the fake's "2K"
    assert image.convert("RGB").getpixel((48, 32)) == (255, 255, 255)  # derived from the white base image
    assert task["result_image_path"].startswith(f"editings/{task['id']}/")


def test_the_token_is_cached_across_tasks(app_factory: AppFactory, vertex: VertexFake) -> None:
    api = vertex_api(app_factory, vertex)
    first = api.wait(api.create(generation())["id"])
    second = api.wait(api.create(generation(width=1600, height=900))["id"])

    assert first["status"] == second["status"] == "COMPLETED"
    assert vertex.grants == 1
    assert len(vertex.requests) == 2
    assert vertex.requests[1].body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}
    assert [r["service"] for r in second["service_requests"]] == ["vertex"]


def test_express_mode_uses_the_api_key_and_no_oauth(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.api_key = "AQ.express-test-key"
    api = remote_api(app_factory, vertex=service(vertex.base_url, "AQ.express-test-key"))
    task = api.wait(api.create(generation(width=None, height=None))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    [call] = vertex.requests
    assert (call.auth, call.project) == ("api-key", None)
    assert "imageConfig" not in call.body["generationConfig"]  # no size, no configured ratio
    assert vertex.grants == 0
    assert "AQ.express-test-key" not in str(task)


# ---------------------------------------------------------------------------------------------- auth failures


def test_a_rejected_token_is_dropped_and_the_call_re_authenticates(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["unauth"]
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert vertex.grants == 2
    assert [r["status"] for r in task["service_requests"]] == [200, 401, 200, 200]
    assert_no_secrets(task, vertex)


def test_credentials_rejected_twice_fail_without_retry(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["unauth", "unauth"]
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "FAILED"
    assert task["retry_count"] == 0
    assert "credentials rejected" in task["errors"][-1] and "UNAUTHENTICATED" in task["errors"][-1]
    assert vertex.grants == 2
    assert_no_secrets(task, vertex)


def test_a_refused_assertion_fails_clearly(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.audience = "https://oauth2.example.invalid/token"  # the fake no longer accepts our assertion
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "FAILED"
    assert task["retry_count"] == 0
    assert "refused the service account" in task["errors"][-1]
    assert vertex.key.client_email in task["errors"][-1]
    assert vertex.refused_grants == 1 and vertex.calls == 0
    assert_no_secrets(task, vertex)


def test_missing_credentials_fail_with_a_message_naming_the_setting(
    app_factory: AppFactory, vertex: VertexFake
) -> None:
    api = remote_api(app_factory, vertex=service(vertex.base_url, location=LOCATION))
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_NOT_AVAILABLE"
    assert task["retry_count"] == 0
    assert "ATELIER_PROVIDERS__VERTEX__CREDENTIALS_FILE" in task["errors"][-1]
    assert vertex.calls == 0


def test_an_unreadable_key_file_fails_without_showing_it(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.key.path.write_text('{"type": "service_account", "client_email": "x@y"}', encoding="utf-8")
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "FAILED"
    assert "lacks private_key" in task["errors"][-1]
    assert vertex.calls == 0


# ---------------------------------------------------------------------------------------------- service failures


def test_rate_limit_is_waited_out_within_the_attempt(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["429"]
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert [r["status"] for r in task["service_requests"]] == [200, 429, 200]


def test_server_errors_are_retried_in_the_call_and_then_by_the_task(
    app_factory: AppFactory, vertex: VertexFake
) -> None:
    vertex.script = ["500", "500"]
    api = remote_api(app_factory, vertex=vertex_service(vertex, call_attempts=2))
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert vertex.calls == 3
    assert "INTERNAL" in task["errors"][0]
    assert vertex.grants == 1  # the retry reused the cached token


def test_a_malformed_answer_is_retried(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["malformed"]
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "malformed response" in task["errors"][0]


def test_an_answer_without_image_is_retried(app_factory: AppFactory, vertex: VertexFake) -> None:
    vertex.script = ["noimage"]
    api = vertex_api(app_factory, vertex)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "no image" in task["errors"][0] and "could not draw" in task["errors"][0]


@pytest.mark.parametrize(("behaviour", "reason"), [("blocked", "SAFETY"), ("unsafe", "IMAGE_SAFETY")])
def test_content_refusals_fail_as_content_rejected_without_retry(
    app_factory: AppFactory, vertex: VertexFake, behaviour: str, reason: str
) -> None:
    vertex.script = [behaviour]
    api = vertex_api(app_factory, vertex, max_retries=2)
    task = api.wait(api.create(generation())["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "CONTENT_REJECTED"
    assert task["retry_count"] == 0
    assert reason in task["errors"][-1]
    assert vertex.calls == 1


def test_invalid_requests_are_never_retried_nor_handed_to_the_fallback(
    app_factory: AppFactory, vertex: VertexFake, fal: FalFake
) -> None:
    vertex.script = ["invalid"]
    api = remote_api(app_factory, vertex=vertex_service(vertex), fal=service(fal.base_url, FAL_KEY))
    task = api.wait(api.create(generation(fallback_provider_type="FAL_STANDARD"))["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert "INVALID_ARGUMENT" in task["errors"][-1]
    assert vertex.calls == 1
    assert fal.submits == 0


def test_permanent_failure_activates_the_fal_fallback(
    app_factory: AppFactory, vertex: VertexFake, fal: FalFake
) -> None:
    vertex.script = ["500", "500"]
    api = remote_api(
        app_factory,
        max_retries=1,
        vertex=vertex_service(vertex, call_attempts=1),
        fal=service(fal.base_url, FAL_KEY),
    )
    task = api.wait(api.create(generation(width=64, height=48, fallback_provider_type="FAL_STANDARD"))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert vertex.calls == 2
    assert fal.submits == 1
    assert any("fallback FAL_STANDARD activated" in e for e in task["errors"])
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    assert image.size == (64, 48)
    assert image.convert("RGB").getpixel((0, 0)) == (200, 40, 40)  # fal's red
    assert task["service_task_id"] == next(iter(fal.jobs))


# ---------------------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("size", "ratio"),
    [((800, 1000), "4:5"), ((1000, 1000), "1:1"), ((1920, 1080), "16:9"), ((2560, 1080), "21:9"), ((600, 900), "2:3")],
)
def test_nearest_aspect_ratio(size: tuple[int, int], ratio: str) -> None:
    assert nearest_aspect_ratio(*size) == ratio


def test_global_location_has_no_regional_host() -> None:
    assert vertex_base_url(VertexSettings(location="global")) == "https://aiplatform.googleapis.com"
    assert vertex_base_url(VertexSettings(location="europe-west4")) == "https://europe-west4-aiplatform.googleapis.com"
    assert vertex_base_url(VertexSettings(base_url="http://proxy/", location="global")) == "http://proxy"


def test_image_size_only_for_models_that_understand_it() -> None:
    assert not supports_image_size("gemini-2.5-flash-image")
    assert supports_image_size("gemini-3-pro-image-preview")
    kwargs: dict[str, Any] = {
        "prompt": "p",
        "images": [],
        "system_instruction": "s",
        "temperature": 1.0,
        "top_p": 0.9,
        "aspect_ratio": None,
        "image_size": "4K",
    }
    assert "imageConfig" not in request_body(model="gemini-2.5-flash-image", **kwargs)["generationConfig"]
    body = request_body(model="gemini-3-pro-image-preview", seed=2**40 + 5, **kwargs)
    assert body["generationConfig"]["imageConfig"] == {"imageSize": "4K"}
    assert body["generationConfig"]["seed"] == 5


def test_token_cache_refreshes_a_minute_before_expiry() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    fetched: list[str] = []

    def fetch() -> tuple[str, float]:
        fetched.append(f"t{len(fetched)}")
        return fetched[-1], 3600.0

    assert cache.get(("k",), fetch) == "t0"
    now[0] += 3539
    assert cache.get(("k",), fetch) == "t0"
    now[0] += 2
    assert cache.get(("k",), fetch) == "t1"
    cache.drop(("k",), "t0")  # a stale value does not evict its replacement
    assert cache.get(("k",), fetch) == "t1"
    cache.drop(("k",), "t1")
    assert cache.get(("k",), fetch) == "t2"


def test_answer_parsing() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    answer = {
        "candidates": [{"content": {"parts": [{"text": "hi"}, {"inlineData": {"mimeType": "image/png", "data": png}}]}}]
    }
    assert answer_image(answer).data == b"\x89PNG fake"
    draft = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(b"draft").decode()}, "thought": True}
    answer["candidates"][0]["content"]["parts"].insert(0, draft)
    assert answer_image(answer).data == b"\x89PNG fake"  # thinking drafts are skipped
    with pytest.raises(ProviderFatalError) as refused:
        answer_image({"candidates": [{"content": {"parts": []}, "finishReason": "PROHIBITED_CONTENT"}]})
    assert refused.value.category == ErrorCategory.CONTENT_REJECTED
    with pytest.raises(RemoteJobFailedError):
        answer_image({"candidates": [{"content": {"parts": [{"text": "no"}]}, "finishReason": "NO_IMAGE"}]})
    with pytest.raises(RemoteJobFailedError):
        answer_image({"usageMetadata": {}})
