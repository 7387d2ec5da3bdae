"""FAL providers against a local fake of fal's queue protocol."""

from __future__ import annotations

import io

from PIL import Image

from tests.conftest import Api, AppFactory, data_url
from tests.fakes.fal import FalFake
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

KEY = FAL_KEY


def fal_api(app_factory: AppFactory, fake: FalFake, **kwargs: object) -> Api:
    return remote_api(app_factory, fal=service(fake.base_url, KEY), **kwargs)  # type: ignore[arg-type]


def generation(**extra: object) -> dict[str, object]:
    return {"task_type": "GENERATION", "prompt": "a red dress on a mannequin", "width": 64, "height": 48, **extra}


def test_generation_happy_path_stores_the_result_and_logs_every_call(app_factory: AppFactory, fal: FalFake) -> None:
    api = fal_api(app_factory, fal)
    task = api.wait(api.create(generation(seed=7))["id"])

    assert task["status"] == "COMPLETED", task["errors"]
    assert task["provider_type"] == "FAL_STANDARD"
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    assert image.size == (64, 48)
    assert task["result_image_path"].startswith(f"generations/{task['id']}/")
    [job] = fal.jobs.values()
    assert job.app_id == "fal-ai/flux/dev"
    assert job.arguments["image_size"] == {"width": 64, "height": 48}
    assert job.arguments["seed"] == 7
    assert task["fal_request_id"] == task["service_task_id"] == next(iter(fal.jobs))
    assert task["seed"] == 1234  # the seed the app reports
    calls = [(r["method"], r["status"]) for r in task["service_requests"]]
    assert calls[0] == ("POST", 200)
    assert ("GET", 202) in calls and calls.count(("GET", 200)) >= 3  # status polls, result, file download
    assert all(KEY not in str(r) for r in task["service_requests"])
    assert all("duration_ms" in r and r["service"] == "fal" for r in task["service_requests"])


def test_reference_influence_becomes_fal_denoising_strength(app_factory: AppFactory, fal: FalFake) -> None:
    api = fal_api(app_factory, fal)
    body = generation(reference_image_data=data_url((12, 12), "green"), reference_image_strength=75)
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = fal.jobs.values()
    assert job.arguments["image_url"].startswith("data:image/png;base64,")
    assert job.arguments["strength"] == 0.25  # 75 % influence of the reference = 25 % denoising


def test_editing_sends_images_inline_and_app_from_the_task(app_factory: AppFactory, fal: FalFake) -> None:
    api = fal_api(app_factory, fal)
    body = {
        "task_type": "EDITING",
        "prompt": "make it blue",
        "base_image": data_url((30, 20), "white"),
        "reference_images": [data_url((10, 10), "blue")],
        "fal_app_id": "acme/editor/v2",
    }
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = fal.jobs.values()
    assert job.app_id == "acme/editor/v2"
    assert job.arguments["image_url"].startswith("data:image/png;base64,")
    assert len(job.arguments["image_urls"]) == 2


def test_rate_limit_and_5xx_are_retried_within_the_attempt(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["429", "status500"]
    api = fal_api(app_factory, fal)
    task = api.wait(api.create(generation())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 0
    assert fal.submits == 1
    statuses = [r.get("status") for r in task["service_requests"]]
    assert 429 in statuses and 503 in statuses


def test_malformed_status_fails_the_attempt_and_the_retry_polls_the_same_request(
    app_factory: AppFactory, fal: FalFake
) -> None:
    fal.script = ["malformed"]
    api = fal_api(app_factory, fal)
    task = api.wait(api.create(generation())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert "malformed response" in task["errors"][0]
    assert fal.submits == 1  # the request itself was fine: polled again, not paid for twice


def test_a_failed_remote_job_is_resubmitted_on_retry(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["fail", "ok"]
    api = fal_api(app_factory, fal)
    task = api.wait(api.create(generation())["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["retry_count"] == 1
    assert fal.submits == 2
    assert "CUDA out of memory" in task["errors"][0]


def test_permanent_failure_after_retries(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["fail"] * 3
    api = fal_api(app_factory, fal, max_retries=2)
    task = api.wait(api.create(generation())["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "PROVIDER_ERROR"
    assert fal.submits == 3


def test_invalid_input_is_never_retried(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["invalid"]
    api = fal_api(app_factory, fal, plugins=[FALLBACK_PLUGIN])
    task = api.wait(api.create(generation(fallback_provider_type="VERTEX"))["id"])
    assert task["status"] == "FAILED"
    assert task["error_category"] == "INVALID_INPUT"
    assert task["retry_count"] == 0
    assert task["fallback_provider_type"] == "VERTEX" and task["service_task_id"] is None
    assert "field required" in task["errors"][-1]


def test_rejected_credentials_fail_without_retry(app_factory: AppFactory, fal: FalFake) -> None:
    api = remote_api(app_factory, fal=service(fal.base_url, "wrong-key"))
    task = api.wait(api.create(generation())["id"])
    assert task["status"] == "FAILED"
    assert "credentials rejected" in task["errors"][-1]
    assert task["retry_count"] == 0
    assert "wrong-key" not in str(task)


def test_content_rejection_activates_the_fallback(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["nsfw"]
    api = fal_api(app_factory, fal, plugins=[FALLBACK_PLUGIN])
    body = generation(fallback_provider_type="VERTEX", fallback_provider_capabilities=["OUTPUT_SIZE"])
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert "rejected" in task["errors"][0]
    assert task["active_provider_capabilities"] == ["OUTPUT_SIZE"]
    image = Image.open(io.BytesIO(storage_bytes(api, task["result_image_path"])))
    assert image.getpixel((0, 0)) == (0, 0, 255)  # the fallback's blue, not fal's red
    assert task["service_task_id"] != next(iter(fal.jobs))  # fal's dead request id was dropped
    assert fal.submits == 1


def test_video_generation_stores_the_video(app_factory: AppFactory, fal: FalFake) -> None:
    api = fal_api(app_factory, fal)
    body = {"task_type": "VIDEO_GENERATION", "prompt": "catwalk", "input_image_data": data_url((16, 16))}
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["result_video_path"].endswith(".mp4")
    assert storage_bytes(api, task["result_video_path"]).startswith(b"\x00\x00\x00\x18ftyp")
    [job] = fal.jobs.values()
    assert job.app_id.endswith("image-to-video")
    assert job.arguments["duration"] == "5"


def test_experimental_fal_passes_parameters_and_keeps_json_outputs(app_factory: AppFactory, fal: FalFake) -> None:
    api = fal_api(app_factory, fal)
    body = {"task_type": "EXPERIMENTAL_FAL", "fal_app_id": "json/echo", "fal_parameters": {"x": 1}}
    task = api.wait(api.create(body)["id"])
    assert task["status"] == "COMPLETED", task["errors"]
    [job] = fal.jobs.values()
    assert job.arguments == {"x": 1}
    row = task_row(api, task["id"])
    assert row.task_data["fal_output"]["answer"] == 42


def test_resumed_task_polls_the_saved_request_instead_of_resubmitting(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["slow"]
    first = fal_api(app_factory, fal)
    task_id = first.create(generation())["id"]
    until(lambda: task_row(first, task_id).service_task_id is not None, what="request id saved")
    row = task_row(first, task_id)
    assert row.provider_config and row.provider_config["fal_request_id"] == row.service_task_id
    steal_lease(first, task_id)  # the worker "dies": its attempt loses the lease
    until(lambda: fal.status_calls > 0)
    first.close()

    fal.release()
    second = fal_api(app_factory, fal)
    task = second.wait(task_id)
    assert task["status"] == "COMPLETED", task["errors"]
    assert task["is_resumed"] is True
    assert fal.submits == 1
    assert task["fal_request_id"] == row.service_task_id


def test_cancel_stops_polling_and_cancels_remotely(app_factory: AppFactory, fal: FalFake) -> None:
    fal.script = ["slow"]
    api = fal_api(app_factory, fal)
    task_id = api.create(generation())["id"]
    until(lambda: task_row(api, task_id).service_task_id is not None, what="request id saved")
    cancel(api, task_id)
    task = api.wait(task_id)
    assert task["status"] == "CANCELLED"
    until(lambda: fal.cancels == 1, what="remote cancel")
    [job] = fal.jobs.values()
    assert job.cancelled
