"""The evaluation endpoints over HTTP: auth, validation, input guards, backends, breaker 503 and health."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from atelier.app import create_app
from atelier.core.auth import Role
from atelier.core.migrate import upgrade
from tests.api.helpers import assert_422
from tests.conftest import Api, data_url, make_settings
from tests.evaluation.conftest import encoded, llm_providers
from tests.fakes.vision_llm import VisionLLMFake

URL = "/api/v1/evaluation/"
HEALTH = "/api/v1/evaluation/health"
OPENAI = {"provider": "openai"}
BODY: dict[str, Any] = {"expected_framing": "full_body", "expected_view_angle": "front"}


def body(**extra: Any) -> dict[str, Any]:
    return {**BODY, "image_data": data_url((64, 48)), **extra}


def noise_data_url(size: int) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return "data:image/png;base64," + base64.b64encode(encoded(Image.fromarray(pixels))).decode()


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory, vision_server: VisionLLMFake) -> Iterator[Api]:
    """One app for the module (starting one costs seconds): local backend by default, vision LLMs on the fake,
    small input limits, breakers that open after two failures."""
    settings = make_settings(
        tmp_path_factory.mktemp("evaluation") / "data",
        broker={"embedded_worker": False},
        inputs={"max_bytes": 20_000, "max_pixels": 250_000},
        providers=llm_providers(vision_server.base_url),
        evaluation={"failure_threshold": 2, "recovery_seconds": 600},
    )
    upgrade(settings.database_url)
    client = TestClient(create_app(settings))
    client.__enter__()
    api = Api(client, settings)
    yield api
    api.close()


@pytest.fixture
def plain(shared_app: Api, vision: VisionLLMFake) -> Api:
    """The shared app with fresh breakers and statistics (the evaluator is rebuilt on first use)."""
    shared_app.client.app.state.evaluator = None  # type: ignore[attr-defined]
    return shared_app


@pytest.mark.parametrize(("method", "path"), [("POST", URL), ("GET", HEALTH)])
def test_401_without_token(plain: Api, method: str, path: str) -> None:
    response = plain.client.request(method, path, json=body())
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"image_data": data_url(), "expected_view_angle": "front"}, "expected_framing"),
        (body(expected_framing="wide"), "expected_framing"),
        (body(expected_gender="robot"), "expected_gender"),
        (body(surprise=1), "surprise"),
        (body(include_descriptions="maybe"), "include_descriptions"),
    ],
)
def test_422_on_bad_body(plain: Api, payload: dict[str, Any], loc: str) -> None:
    assert_422(plain.client.post(URL, json=payload, headers=plain.headers()), "body", loc)


def test_422_on_unknown_provider(plain: Api) -> None:
    assert_422(plain.client.post(URL, params={"provider": "oracle"}, json=body(), headers=plain.headers()), "provider")


@pytest.mark.parametrize(
    ("image", "code", "loc"),
    [
        ({"image_data": "data:image/png;base64,!!notbase64!!"}, "invalid_input", "image_data"),
        ({"image_data": "data:text/plain;base64,aGVsbG8="}, "invalid_input", "image_data"),
        ({"image_data": base64.b64encode(b"not an image at all").decode()}, "invalid_input", "image_data"),
        ({"image_url": "http://127.0.0.1:9/a.png"}, "unsafe_url", "image_url"),
        ({"image_url": "http://[::ffff:10.0.0.1]/a.png"}, "unsafe_url", "image_url"),
        ({"image_url": "file:///etc/passwd"}, "unsafe_url", "image_url"),
        ({"image_data": noise_data_url(120)}, "input_too_large", "image_data"),  # over 20 000 bytes
        ({}, "invalid_input", "image_data"),
    ],
)
def test_image_guards(plain: Api, image: dict[str, str], code: str, loc: str) -> None:
    response = plain.client.post(URL, json={**BODY, **image}, headers=plain.headers())
    error = assert_422(response, "body", loc)["detail"][0]
    assert error["type"] == code


def test_decompression_bomb_is_refused_before_decoding(plain: Api) -> None:
    huge = "data:image/png;base64," + base64.b64encode(encoded(Image.new("L", (1000, 1000)))).decode()
    error = assert_422(plain.client.post(URL, json=body(image_data=huge), headers=plain.headers()))["detail"][0]
    assert error["type"] == "input_too_large" and "pixels" in error["msg"]


def test_local_backend_by_default_for_any_role(plain: Api) -> None:
    response = plain.client.post(URL, json=body(), headers=plain.headers(role=Role.VIEWER))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"] is True and result["human_detected"] is False and result["number_of_people"] == 0
    assert result["detected_framing"] is None and result["matches_expected"] is None
    assert result["confidence_summary"] == pytest.approx(result["human_presence_confidence"])
    assert result["evaluation_time_ms"] > 0
    health = plain.client.get(HEALTH, params={"provider": "local"}, headers=plain.headers()).json()
    assert health["total_evaluations"] == 1 and health["success_rate"] == 1.0


def test_vision_llm_through_the_api(plain: Api, vision: VisionLLMFake) -> None:
    response = plain.client.post(URL, params=OPENAI, json=body(include_descriptions=True), headers=plain.headers())
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["matches_expected"] is True and result["detected_gender"] == "FEMALE"
    assert result["anatomy_issues"] == ["extra_fingers"] and result["scene_description"] == "A plain grey studio."
    assert result["confidence_summary"] == pytest.approx((0.9 + 0.98 + 0.7 + 0.95) / 4)
    vision.answer["view_angle"] = "back"
    mismatch = plain.client.post(URL, params={"provider": "gemini"}, json=body(), headers=plain.headers())
    assert mismatch.json()["matches_expected"] is False
    assert [call.vendor for call in vision.calls] == ["openai", "gemini"]


def test_malformed_answers_give_success_false(plain: Api, vision: VisionLLMFake) -> None:
    vision.script[:] = ["prose", "wrong_enum"]
    response = plain.client.post(URL, params=OPENAI, json=body(), headers=plain.headers())
    assert response.status_code == 200
    result = response.json()
    assert result["success"] is False and "does not match the evaluation schema" in result["error"]
    assert result["detected_framing"] is None and result["confidence_summary"] is None


def test_503_when_failing_then_fast_503_while_the_breaker_is_open(plain: Api, vision: VisionLLMFake) -> None:
    vision.script[:] = ["500", "500"]
    for _ in range(2):
        failed = plain.client.post(URL, params=OPENAI, json=body(), headers=plain.headers())
        assert failed.status_code == 503 and failed.json()["code"] == "evaluation_backend_unavailable"
    refused = plain.client.post(URL, params=OPENAI, json=body(), headers=plain.headers())
    assert refused.status_code == 503 and refused.json()["code"] == "circuit_open"
    assert "circuit breaker is open" in refused.json()["detail"] and refused.headers["Retry-After"]
    assert len(vision.calls) == 2  # the third request never reached the model
    health = plain.client.get(HEALTH, params=OPENAI, headers=plain.headers()).json()
    assert health == {
        "is_healthy": False,
        "health_score": 0.0,
        "total_evaluations": 2,
        "success_rate": 0.0,
        "average_response_time": health["average_response_time"],
        "circuit_breaker_state": "open",
    }
    assert health["average_response_time"] > 0
    # Other backends have their own breakers.
    assert plain.client.post(URL, params={"provider": "local"}, json=body(), headers=plain.headers()).is_success


def test_health_of_an_unconfigured_backend(plain: Api) -> None:
    response = plain.client.get(HEALTH, params={"provider": "anthropic"}, headers=plain.headers(role=Role.VIEWER))
    assert response.status_code == 200
    assert response.json() == {
        "is_healthy": False,
        "health_score": 0.0,
        "total_evaluations": 0,
        "success_rate": 1.0,
        "average_response_time": 0.0,
        "circuit_breaker_state": "closed",
    }
    evaluation = plain.client.post(URL, params={"provider": "anthropic"}, json=body(), headers=plain.headers())
    assert evaluation.status_code == 503 and "ATELIER_PROVIDERS__ANTHROPIC__API_KEY" in evaluation.json()["detail"]
