"""Freepik Magnific providers against a local fake of Freepik's upscaler API."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.conftest import Api, AppFactory
from tests.fakes.freepik import CREATIVE, PRECISION, PRECISION_SCALE, FreepikFake, create_freepik_app
from tests.fakes.server import serve_fake
from tests.providers.conftest import cancel, remote_api, service, steal_lease, storage_bytes, task_row, until

KEY = "freepik-test-key"
RED = (200, 30, 30)
BLUE = (30, 30, 200)


@pytest.fixture
def freepik() -> Iterator[FreepikFake]:
    with serve_fake(FreepikFake(key=KEY), create_freepik_app) as fake:
        yield fake


def freepik_api(app_factory: AppFactory, fake: FreepikFake, **kwargs: object) -> Api:
    return remote_api(app_factory, freepik=service(fake.base_url, KEY), **kwargs)  # type: ignore[arg-type]


def two_tone(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: resizes that go wrong show."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def refine(image: Image.Image | None = None, provider: str = "FREEPIK_MAGNIFIC", **extra: object) -> dict[str, object]:
    source = png_b64(image or two_tone())
    return {
        "task_type": "REFINE",
        "provider_type": provider,
        "base_image_url": f"data:image/png;base64,{source}",
        **extra,
    }


def stored(api: Api, task: dict[str, object]) -> Image.Image:
    image = Image.open(io.BytesIO(storage_bytes(api, str(task["result_image_path"]))))
    image.load()
    return image


def near(pixel: object, colour: tuple[int, int, int], tolerance: int = 2) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def test_creative_happy_path_sends_the_exact_request_and_stores_the_upscaled_pixels(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    api = freepik_api(app_factory, freepik)
    config = {
        "creativity": 3,
        "hdr": -2,
        "resemblance": 1,
        "fractality": -4,
        "engine": "magnific_sharpy",
        "optimized_for": "soft_portraits",
        "defaultPrompt": "unused when the task has a prompt",
    }
    source = two_tone()
    body = refine(source, upscale_factor=4, upscale_prompt="crisp wool texture", provider_config=config)
    task = api.wait(api.create(body)["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    [(task_id, job)] = freepik.jobs.items()
    assert job.endpoint == CREATIVE
    assert job.body == {
        "image": png_b64(source),  # inline, bare base64 (the fake refuses a data: prefix)
        "scale_factor": "4x",
        "optimized_for": "soft_portraits",
        "prompt": "crisp wool texture",
        "creativity": 3,
        "hdr": -2,
        "resemblance": 1,
        "fractality": -4,
        "engine": "magnific_sharpy",
    }
    assert task["service_task_id"] == task_id
    assert task["result_image_path"].startswith(f"refines/{task['id']}/")
    assert storage_bytes(api, task["result_image_path"]) == job.output  # the exact size: kept as downloaded
    image = stored(api, task)
    assert image.size == (160, 80)
    assert image.tobytes() == source.resize((160, 80), Image.Resampling.NEAREST).tobytes()
    assert task["progress"] == 100.0
    calls = [(r["method"], r["status"]) for r in task["service_requests"]]
    assert calls[0] == ("POST", 200)
    assert calls.count(("GET", 200)) == job.polls + 1  # status polls and the file download
    assert all(r["service"] == "freepik" and "duration_ms" in r for r in task["service_requests"])
    assert KEY not in str(task) and KEY not in str(task_row(api, task["id"]).service_requests)
    assert freepik.unexpected == []


def test_the_config_prompt_is_used_when_the_task_has_none(app_factory: AppFactory, freepik: FreepikFake) -> None:
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(provider_config={"defaultPrompt": "studio photo"}))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = freepik.jobs.values()
    assert job.body["prompt"] == "studio photo"
    assert job.body["scale_factor"] == "2x"  # no factor, no target: Magnific's default
    assert stored(api, task).size == (80, 40)


def test_a_non_integer_factor_asks_for_the_next_factor_up_and_resizes_to_the_exact_size(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(upscale_factor=2.5))["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = freepik.jobs.values()
    assert job.body["scale_factor"] == "4x"
    image = stored(api, task)
    assert image.size == (100, 50)  # round(40 * 2.5) x round(20 * 2.5), not the 160x80 the service returned
    assert near(image.getpixel((0, 0)), RED) and near(image.getpixel((99, 49)), BLUE)


def test_a_target_size_picks_the_smallest_sufficient_factor(app_factory: AppFactory, freepik: FreepikFake) -> None:
    api = freepik_api(app_factory, freepik)
    both = api.wait(api.create(refine(target_width=150, target_height=30))["id"])
    width_only = api.wait(api.create(refine(target_width=70))["id"])
    assert both["status"] == width_only["status"] == "COMPLETED"
    factors = {job.body["scale_factor"] for job in freepik.jobs.values()}
    assert factors == {"4x", "2x"}  # 150/40 = 3.75 -> 4x; 70/40 = 1.75 -> 2x
    assert stored(api, both).size == (150, 30)
    assert stored(api, width_only).size == (70, 35)  # the height keeps the aspect ratio


def test_precision_upscaler_sends_its_knobs_and_finishes_the_size_locally(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    api = freepik_api(app_factory, freepik)
    config = {"sharpen": 20, "smart_grain": 5, "ultra_detail": 40, "defaultPrompt": "ignored: no prompt field"}
    source = two_tone()
    body = refine(source, provider="FREEPIK_MAGNIFIC_PRECISION", upscale_factor=4, provider_config=config)
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = freepik.jobs.values()
    assert job.endpoint == PRECISION
    assert job.body == {"image": png_b64(source), "sharpen": 20, "smart_grain": 5, "ultra_detail": 40}
    served = Image.open(io.BytesIO(job.output))
    assert served.size == (40 * PRECISION_SCALE, 20 * PRECISION_SCALE)
    image = stored(api, task)
    assert image.size == (160, 80)
    assert near(image.getpixel((0, 0)), RED) and near(image.getpixel((159, 79)), BLUE)


def test_upscale_disabled_is_invalid_input(app_factory: AppFactory, freepik: FreepikFake) -> None:
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(upscale_enabled=False))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "upscale_enabled" in task["errors"][-1]
    assert freepik.submit_attempts == []


def test_an_output_over_magnifics_pixel_limit_is_refused_before_submitting(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(Image.new("RGB", (2000, 1000), RED), upscale_factor=4))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "25300000" in task["errors"][-1]
    assert freepik.submit_attempts == []


def test_rate_limit_is_retried_within_the_attempt_after_retry_after(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    freepik.script = ["429"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert freepik.submits == 1
    first, second = freepik.submit_attempts
    assert second - first >= 0.9  # Retry-After: 1 was honoured
    assert [r["status"] for r in task["service_requests"]][:2] == [429, 200]


def test_a_5xx_submit_fails_the_attempt_and_the_retry_submits_again(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    freepik.script = ["500"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1  # a POST is not repeated in-call on 5xx: it may have been accepted
    assert "HTTP 500" in task["errors"][0]
    assert len(freepik.submit_attempts) == 2 and freepik.submits == 1


def test_a_5xx_status_poll_is_retried_within_the_attempt(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["status500"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert 503 in [r["status"] for r in task["service_requests"]]
    assert freepik.submits == 1


def test_malformed_status_fails_the_attempt_and_the_retry_polls_the_same_task(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    freepik.script = ["malformed"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "malformed response" in task["errors"][0]
    assert freepik.submits == 1  # the job itself was fine: polled again, not paid for twice
    [job] = freepik.jobs.values()
    assert job.polls == 2  # the malformed answer, then the retry's poll of the same task


def test_a_failed_remote_job_is_resubmitted_on_retry(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["fail", "ok"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert freepik.submits == 2
    failed, succeeded = freepik.jobs
    assert f"task {failed} failed" in task["errors"][0]
    assert task["service_task_id"] == succeeded


def test_permanent_failure_after_retries(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["fail"] * 3
    api = freepik_api(app_factory, freepik, max_retries=2)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_ERROR"
    assert task["retry_count"] == 2
    assert freepik.submits == 3


def test_input_refused_with_400_is_never_retried_nor_handed_to_the_fallback(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    freepik.script = ["invalid"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(fallback_provider_type="FREEPIK_MAGNIFIC_PRECISION"))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert "image: Image resolution is too low" in task["errors"][-1]
    assert task_row(api, task["id"]).fallback_active is False
    assert len(freepik.submit_attempts) == 1 and freepik.submits == 0


def test_a_config_value_the_service_refuses_names_the_parameter(app_factory: AppFactory, freepik: FreepikFake) -> None:
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine(provider_config={"engine": "turbo"}))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "engine: Unknown engine" in task["errors"][-1]
    assert task["retry_count"] == 0


def test_rejected_credentials_fail_without_retry(app_factory: AppFactory, freepik: FreepikFake) -> None:
    api = remote_api(app_factory, freepik=service(freepik.base_url, "wrong-key"))
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "FAILED"
    assert "credentials rejected" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert "wrong-key" not in str(task)
    assert freepik.submit_attempts == []


def test_a_moderation_failure_is_a_content_rejection(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["nsfw"]
    api = freepik_api(app_factory, freepik)
    task = api.wait(api.create(refine())["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "CONTENT_REJECTED"
    assert task["retry_count"] == 0
    assert "content moderation" in task["errors"][-1]
    assert freepik.submits == 1


def test_permanent_failure_activates_the_precision_fallback(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["fail"]
    api = freepik_api(app_factory, freepik, max_retries=0)
    body = refine(
        upscale_factor=PRECISION_SCALE,
        active_provider_capabilities=["UPSCALE_4X"],
        fallback_provider_type="FREEPIK_MAGNIFIC_PRECISION",
        fallback_provider_config={"sharpen": 12},
        fallback_provider_capabilities=["UPSCALE_2X"],
    )
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert "failed" in task["errors"][0]
    assert task["active_provider_capabilities"] == ["UPSCALE_2X"]
    assert task_row(api, task["id"]).fallback_active is True
    assert freepik.submits_to(CREATIVE) == 1 and freepik.submits_to(PRECISION) == 1
    [(precision_id, precision_job)] = [(k, j) for k, j in freepik.jobs.items() if j.endpoint == PRECISION]
    assert precision_job.body["sharpen"] == 12
    assert task["service_task_id"] == precision_id
    assert storage_bytes(api, task["result_image_path"]) == precision_job.output


def test_resumed_task_polls_the_saved_task_instead_of_resubmitting(
    app_factory: AppFactory, freepik: FreepikFake
) -> None:
    freepik.script = ["slow"]
    first = freepik_api(app_factory, freepik)
    task_id = first.create(refine())["id"]
    until(lambda: task_row(first, task_id).service_task_id is not None, what="task id saved")
    saved = task_row(first, task_id).service_task_id
    assert saved == next(iter(freepik.jobs))
    steal_lease(first, task_id)  # the worker "dies": its attempt loses the lease
    until(lambda: freepik.status_calls > 0)
    first.close()

    freepik.release()
    second = freepik_api(app_factory, freepik)
    task = second.wait(task_id)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["is_resumed"] is True
    assert freepik.submits == 1 and len(freepik.submit_attempts) == 1
    assert task["service_task_id"] == saved
    assert stored(second, task).size == (80, 40)


def test_cancel_stops_polling(app_factory: AppFactory, freepik: FreepikFake) -> None:
    freepik.script = ["slow"]
    api = freepik_api(app_factory, freepik)
    task_id = api.create(refine())["id"]
    until(lambda: freepik.status_calls > 1, what="polling started")
    cancel(api, task_id)
    task = api.wait(task_id)
    assert task["status"] == "CANCELLED"
    polls = freepik.status_calls
    time.sleep(0.2)  # ten poll intervals
    assert freepik.status_calls == polls
    [job] = freepik.jobs.values()
    assert job.downloads == 0
    assert freepik.unexpected == []  # Freepik has no cancel endpoint: nothing else was called
