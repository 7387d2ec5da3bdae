"""FASHN_STANDARD (virtual try-on) against a local fake of FASHN's API v1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime

import pytest
from PIL import Image

from tests.conftest import Api, AppFactory, data_url
from tests.fakes.fal import FalFake
from tests.fakes.fashn import FashnFake, FashnJob, create_fashn_app, decode_image
from tests.fakes.server import serve_fake
from tests.providers.conftest import (
    FAL_KEY,
    FALLBACK_PLUGIN,
    cancel,
    remote_api,
    service,
    steal_lease,
    storage_bytes,
    task_row,
    until,
)

KEY = "fashn-test-key"
BLUE = (0, 0, 255)


@pytest.fixture
def fashn() -> Iterator[FashnFake]:
    with serve_fake(FashnFake(key=KEY), create_fashn_app) as fake:
        yield fake


def fashn_api(app_factory: AppFactory, fake: FashnFake, **kwargs: object) -> Api:
    return remote_api(app_factory, fashn=service(fake.base_url, KEY), **kwargs)  # type: ignore[arg-type]


def tryon(**extra: object) -> dict[str, object]:
    return {
        "task_type": "EDITING",
        "provider_type": "FASHN_STANDARD",
        "prompt": "put the garment on the model",
        "base_image": data_url((30, 20), "white"),
        "reference_images": [data_url((10, 10), "blue"), data_url((10, 10), "green")],
        **extra,
    }


def stored_image(api: Api, path: str) -> Image.Image:
    return Image.open(io.BytesIO(storage_bytes(api, path)))


def test_tryon_happy_path_sends_inline_images_and_stores_the_result(app_factory: AppFactory, fashn: FashnFake) -> None:
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon(seed=7))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["provider_type"] == "FASHN_STANDARD"
    [(prediction_id, job)] = fashn.jobs.items()
    assert job.body["model_name"] == "tryon-v1.6"
    assert set(job.body) == {"model_name", "inputs"}
    assert set(job.inputs) == {"model_image", "garment_image", "category", "seed"}
    assert job.inputs["category"] == "auto"
    assert job.inputs["seed"] == 7
    assert job.inputs["model_image"].startswith("data:image/png;base64,")
    model = decode_image(job.inputs["model_image"]).convert("RGB")
    garment = decode_image(job.inputs["garment_image"]).convert("RGB")
    assert model.size == (30, 20) and model.getpixel((0, 0)) == (255, 255, 255)
    assert garment.getpixel((0, 0)) == BLUE  # the first reference image is the garment
    # The result was downloaded into the task's folder: the model's size in the garment's colour.
    assert task["result_image_path"].startswith(f"editings/{task['id']}/")
    image = stored_image(api, task["result_image_path"]).convert("RGB")
    assert image.size == (30, 20)
    assert image.getpixel((15, 10)) == BLUE
    assert fashn.base_url not in str(task["result_image_path"])
    assert task["service_task_id"] == prediction_id
    assert task_row(api, task["id"]).provider_config["fashn_task_id"] == prediction_id  # type: ignore[index]
    assert fashn.submits == 1 and fashn.status_calls == 1 and fashn.downloads == 1
    calls = [(r["method"], r["url"].removeprefix(fashn.base_url), r["status"]) for r in task["service_requests"]]
    assert calls == [
        ("POST", "/v1/run", 200),
        ("GET", f"/v1/status/{prediction_id}", 200),
        ("GET", f"/files/{prediction_id}.png", 200),
    ]
    assert all(r["service"] == "fashn" and "duration_ms" in r for r in task["service_requests"])
    assert KEY not in str(task)


def test_a_job_still_processing_is_polled_again_after_the_poll_interval(
    app_factory: AppFactory, fashn: FashnFake
) -> None:
    fashn.script = ["twostep"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon(provider_config={"poll_interval": 1}))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert fashn.submits == 1 and fashn.status_calls == 2
    polls = [datetime.fromisoformat(r["at"]) for r in task["service_requests"] if "/v1/status/" in r["url"]]
    assert len(polls) == 2
    assert (polls[1] - polls[0]).total_seconds() >= 0.9  # the config's poll_interval, not the service default


def test_tall_inputs_are_downscaled_and_the_deprecated_reference_is_the_garment(
    app_factory: AppFactory, fashn: FashnFake
) -> None:
    api = fashn_api(app_factory, fashn)
    body = tryon(
        base_image=data_url((40, 300), "white"),
        reference_images=None,
        reference_image_data=data_url((8, 200), "red"),
        provider_config={"max_image_height": 100},
    )
    task = api.wait(api.create(body)["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    [job] = fashn.jobs.values()
    assert "seed" not in job.inputs
    assert decode_image(job.inputs["model_image"]).size == (13, 100)
    garment = decode_image(job.inputs["garment_image"]).convert("RGB")
    assert garment.size == (4, 100) and garment.getpixel((2, 50)) == (255, 0, 0)
    assert stored_image(api, task["result_image_path"]).size == (13, 100)


def test_rate_limit_and_5xx_status_are_retried_within_the_attempt(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["429", "status500"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert fashn.submits == 1 and fashn.submit_calls == 2
    statuses = [r.get("status") for r in task["service_requests"]]
    assert statuses[:2] == [429, 200]
    assert 503 in statuses


def test_a_failed_submit_is_retried_by_the_next_attempt(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["500"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1  # a POST is not repeated inside the attempt: the task retry does it
    assert "HTTP 500" in task["errors"][0] and "InternalServerError" in task["errors"][0]
    assert fashn.submit_calls == 2 and fashn.submits == 1


def test_malformed_status_fails_the_attempt_and_the_retry_polls_the_same_prediction(
    app_factory: AppFactory, fashn: FashnFake
) -> None:
    fashn.script = ["malformed"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "malformed response" in task["errors"][0]
    assert fashn.submits == 1  # the prediction itself was fine: polled again, not paid for twice
    assert fashn.status_calls == 2


def test_a_failed_prediction_is_resubmitted_on_retry(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["fail", "ok"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert fashn.submits == 2
    assert "PipelineError" in task["errors"][0]
    first, second = fashn.jobs
    assert first in task["errors"][0]
    assert task["service_task_id"] == second
    assert task_row(api, task["id"]).provider_config["fashn_task_id"] == second  # type: ignore[index]


def test_permanent_failure_after_retries(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["fail"] * 3
    api = fashn_api(app_factory, fashn, max_retries=2)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_ERROR"
    assert task["retry_count"] == 2
    assert fashn.submits == 3


def test_input_rejected_by_the_api_is_never_retried(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["invalid"]
    api = fashn_api(app_factory, fashn, plugins=[FALLBACK_PLUGIN])
    task = api.wait(api.create(tryon(fallback_provider_type="VERTEX"))["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert task["service_task_id"] is None  # no fallback ran either
    assert "unsupported image format" in task["errors"][-1]
    assert fashn.submit_calls == 1 and fashn.submits == 0


def test_an_unusable_input_reported_at_runtime_is_never_retried(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["pose"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert "PoseError" in task["errors"][-1]
    assert fashn.submits == 1


def test_content_moderation_is_a_content_rejection(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["moderation"]
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "CONTENT_REJECTED"
    assert task["retry_count"] == 0
    assert "ContentModerationError" in task["errors"][-1]
    assert fashn.submits == 1


def test_a_task_without_a_garment_fails_before_any_call(app_factory: AppFactory, fashn: FashnFake) -> None:
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon(reference_images=None))["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert "garment" in task["errors"][-1]
    assert fashn.submit_calls == 0


def test_rejected_credentials_fail_without_retry(app_factory: AppFactory, fashn: FashnFake) -> None:
    api = remote_api(app_factory, fashn=service(fashn.base_url, "wrong-key"))
    task = api.wait(api.create(tryon())["id"])

    assert task["status"] == "FAILED"
    assert "credentials rejected" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert fashn.submit_calls == 1 and fashn.submits == 0
    assert "wrong-key" not in str(task)


def test_a_prediction_that_never_finishes_times_out(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["slow"]
    api = fashn_api(app_factory, fashn, max_retries=0)
    task = api.wait(api.create(tryon(provider_config={"max_wait_seconds": 1, "poll_interval": 1}))["id"])

    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_TIMEOUT"
    assert "still not finished after 1s" in task["errors"][-1]
    assert fashn.submits == 1 and fashn.status_calls == 2


def test_permanent_failure_activates_the_fal_fallback(app_factory: AppFactory, fashn: FashnFake, fal: FalFake) -> None:
    fashn.script = ["fail"]
    api = remote_api(
        app_factory,
        max_retries=0,
        fashn=service(fashn.base_url, KEY),
        fal=service(fal.base_url, FAL_KEY),
    )
    body = tryon(
        fallback_provider_type="FAL_STANDARD",
        fallback_provider_capabilities=["OUTPUT_SIZE"],
        width=24,
        height=18,
    )
    task = api.wait(api.create(body)["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert "PipelineError" in task["errors"][0]
    assert task["active_provider_capabilities"] == ["OUTPUT_SIZE"]
    assert fashn.submits == 1 and fal.submits == 1
    [(request_id, job)] = fal.jobs.items()
    assert job.app_id == "fal-ai/flux-pro/kontext"
    assert task["service_task_id"] == request_id != next(iter(fashn.jobs))
    image = stored_image(api, task["result_image_path"]).convert("RGB")
    assert image.size == (24, 18)
    assert image.getpixel((0, 0)) == (200, 40, 40)  # fal's red, not a try-on in the garment's blue
    assert {r["service"] for r in task["service_requests"]} == {"fashn", "fal"}


def test_resumed_task_polls_the_saved_prediction_instead_of_resubmitting(
    app_factory: AppFactory, fashn: FashnFake
) -> None:
    fashn.script = ["slow"]
    first = fashn_api(app_factory, fashn)
    task_id = first.create(tryon())["id"]
    until(lambda: task_row(first, task_id).service_task_id is not None, what="prediction id saved")
    row = task_row(first, task_id)
    assert row.provider_config and row.provider_config["fashn_task_id"] == row.service_task_id
    until(lambda: fashn.status_calls > 0, what="first status poll")
    steal_lease(first, task_id)  # the worker "dies": its attempt loses the lease
    first.close()

    fashn.release()
    second = fashn_api(app_factory, fashn)
    task = second.wait(task_id)

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["is_resumed"] is True
    assert fashn.submits == 1
    assert task["service_task_id"] == row.service_task_id
    assert stored_image(second, task["result_image_path"]).convert("RGB").getpixel((0, 0)) == BLUE


def test_a_prediction_id_in_the_config_is_polled_instead_of_submitting(
    app_factory: AppFactory, fashn: FashnFake
) -> None:
    inputs = {"model_image": data_url((12, 9)), "garment_image": data_url((4, 4), "green")}
    fashn.jobs["existing-1"] = FashnJob({"model_name": "tryon-v1.6", "inputs": inputs}, "ok")
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon(provider_config={"fashn_task_id": "existing-1"}))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert fashn.submit_calls == 0
    assert task["service_task_id"] == "existing-1"
    image = stored_image(api, task["result_image_path"]).convert("RGB")
    assert image.size == (12, 9) and image.getpixel((0, 0)) == (0, 128, 0)


def test_an_untracked_prediction_is_replaced_by_a_new_one(app_factory: AppFactory, fashn: FashnFake) -> None:
    api = fashn_api(app_factory, fashn)
    task = api.wait(api.create(tryon(provider_config={"fashn_task_id": "expired-1"}))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "expired-1 is unknown" in task["errors"][0]
    assert fashn.submits == 1
    [prediction_id] = fashn.jobs
    assert task["service_task_id"] == prediction_id
    assert task_row(api, task["id"]).provider_config["fashn_task_id"] == prediction_id  # type: ignore[index]


def test_cancel_stops_polling_and_cancels_remotely(app_factory: AppFactory, fashn: FashnFake) -> None:
    fashn.script = ["slow"]
    api = fashn_api(app_factory, fashn)
    task_id = api.create(tryon())["id"]
    until(lambda: fashn.status_calls > 0, what="first status poll")
    cancel(api, task_id)
    task = api.wait(task_id)

    assert task["status"] == "CANCELLED"
    until(lambda: fashn.cancels == 1, what="remote cancel")
    [job] = fashn.jobs.values()
    assert job.cancelled
    assert task.get("result_image_path") is None
    assert fashn.downloads == 0
