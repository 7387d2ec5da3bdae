"""The Training API: validation before anything is written, tenancy, cancel, and real trainings end to end."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from atelier.core.auth import Role
from tests.api.helpers import runtime_of, stored_files
from tests.conftest import Api, AppFactory
from tests.delivery.conftest import FAST, SECRET, receiver, receiver_factory  # noqa: F401 - fixtures
from tests.fakes.llm import LLMFake, answer_text, create_llm_app
from tests.fakes.server import serve_fake
from tests.fakes.webhooks import Receiver
from tests.providers.conftest import service

os.environ["HF_HUB_OFFLINE"] = "1"
URL = "/api/v1/training/"


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> str:
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:] = colour
    array[::6] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"trigger_word": "sks", "source_images": [_png((220, 30, 30)), _png((30, 30, 220))]}
    body.update(overrides)
    return body


def _trainings(api: Api) -> int:
    from sqlalchemy import func, select

    from atelier.training.models import TrainingTask

    with runtime_of(api).sessions() as session:
        return int(session.scalar(select(func.count()).select_from(TrainingTask)) or 0)


def _get(api: Api, training_id: str, tenant: str = "acme") -> dict[str, Any]:
    response = api.client.get(f"{URL}{training_id}", headers=api.headers(tenant))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _wait(api: Api, training_id: str, until: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        training = _get(api, training_id)
        if until(training):
            return training
        if time.monotonic() > deadline:
            raise AssertionError(f"training stuck: {training['status']} {training['logs'][-500:]}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "loc_part", "message"),
    [
        ({"trigger_word": ""}, "trigger_word", ""),
        ({"training_type": "FULL"}, "training_type", "only LORA"),
        ({"source_images": []}, "source_images", "at least one"),
        ({"source_images": ["http://127.0.0.1/a.png"]}, "source_images", ""),
        ({"source_images": ["training/nope.png"]}, "source_images", "no such file"),
        ({"source_images": ["data:image/png;base64,!!!"]}, "source_images", ""),
        ({"preprocessing_transforms": [{"type": "SHARPEN_ALL"}]}, "preprocessing_transforms", "unknown transform"),
        ({"preprocessing_transforms": [{"type": "RESIZE", "size": 2}]}, "preprocessing_transforms", "RESIZE"),
        ({"preprocessing_captioning_strategy": "vlm"}, "preprocessing_captioning_strategy", "CAPTIONING_PROVIDER"),
        (
            {"preprocessing_captioning_strategy": "template", "preprocessing_captioning_prompt": "no marker"},
            "preprocessing_captioning_prompt",
            "{trigger}",
        ),
        ({"steps": 10**9}, "steps", "at most"),
        ({"webhook_url": "http://169.254.169.254/hook"}, "webhook_url", ""),
        ({"unknown_knob": 1}, "unknown_knob", ""),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    idle_api: Api, overrides: dict[str, Any], loc_part: str, message: str
) -> None:
    response = idle_api.client.post(URL, json=_body(**overrides), headers=idle_api.headers())
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(loc_part in [str(p) for p in item["loc"]] for item in detail), detail
    assert message in json.dumps(detail)
    assert _trainings(idle_api) == 0
    assert stored_files(idle_api) == []


def test_auth_roles_and_tenants(idle_api: Api) -> None:
    assert idle_api.client.post(URL, json=_body()).status_code == 401
    assert idle_api.client.get(URL).status_code == 401
    viewer = idle_api.headers(role=Role.VIEWER)
    assert idle_api.client.post(URL, json=_body(), headers=viewer).status_code == 403
    created = idle_api.client.post(URL, json=_body(), headers=idle_api.headers()).json()
    assert idle_api.client.get(f"{URL}{created['id']}", headers=idle_api.headers("other")).status_code == 404
    assert idle_api.client.post(f"{URL}{created['id']}/cancel", headers=idle_api.headers("other")).status_code == 404
    assert idle_api.client.get(URL, headers=idle_api.headers("other")).json() == []
    assert idle_api.client.post(f"{URL}{created['id']}/cancel", headers=viewer).status_code == 403
    assert idle_api.client.get(f"{URL}not-a-uuid", headers=idle_api.headers()).status_code == 422


def test_create_fills_the_spec_defaults_and_stores_inline_sources(idle_api: Api) -> None:
    response = idle_api.client.post(URL, json=_body(entity_type="SUBJECT"), headers=idle_api.headers())
    assert response.status_code == 200, response.text
    training = response.json()
    expected = {
        "status": "PENDING",
        "training_type": "LORA",
        "entity_type": "SUBJECT",
        "rank": 16,
        "steps": 1000,
        "total_steps": 1000,
        "learning_rate": 0.0001,
        "optimizer": "adamw8bit",
        "base_model_path": "black-forest-labs/FLUX.1-dev",
        "save_every": 2000,
        "max_step_saves_to_keep": 4,
        "sample_every": 0,  # no sample prompts: nothing to sample
        "priority": 1,
        "progress": 0.0,
        "preprocessing_captioning_strategy": "trigger_only",
        "total_files_count": 2,
        "processed_files_count": 0,
        "webhook_url": "",
        "origin_instance": "unknown",
    }
    assert {k: training[k] for k in expected} == expected
    assert training["training_folder"] == f"training/{training['id']}"
    assert training["celery_training_task_id"]
    sources = training["source_images"]
    assert sources == [f"training/{training['id']}/sources/source_{i:04d}.png" for i in range(2)]
    assert sorted(stored_files(idle_api)) == sorted(f"tenants/acme/{path}" for path in sources)


def test_list_paginates_newest_first_and_cancel_of_pending(idle_api: Api) -> None:
    ids = [idle_api.client.post(URL, json=_body(), headers=idle_api.headers()).json()["id"] for _ in range(3)]
    page = idle_api.client.get(f"{URL}?limit=2", headers=idle_api.headers()).json()
    rest = idle_api.client.get(f"{URL}?limit=2&skip=2", headers=idle_api.headers()).json()
    assert [t["id"] for t in page + rest] == ids[::-1]
    cancelled = idle_api.client.post(f"{URL}{ids[0]}/cancel", headers=idle_api.headers())
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED" and cancelled.json()["completed_at"]
    again = idle_api.client.post(f"{URL}{ids[0]}/cancel", headers=idle_api.headers())
    assert again.status_code == 409


# ------------------------------------------------------------------------------------------ end to end

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from atelier.training.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd", "sd", seed=0)


def _read(api: Api, path: str) -> bytes:
    storage = runtime_of(api).storage
    from atelier.storage.service import TenantStorage

    return TenantStorage(storage, "acme").read(path)


def test_a_training_runs_end_to_end(app_factory: AppFactory, sd_folder: Path) -> None:
    api = app_factory(training={"progress_interval_seconds": 0.0})
    body = _body(
        base_model_path=str(sd_folder),
        steps=24,
        rank=4,
        learning_rate=1e-3,
        resolution=32,
        save_every=8,
        max_step_saves_to_keep=2,
        sample_every=12,
        sample_steps=2,
        sample_prompts=["a photo of sks"],
        optimizer="adamw8bit",
        preprocessing_transforms=[
            {"type": "CROP_TO_SUBJECT"},
            {"type": "PAD_TO_SQUARE", "color": "black"},
            {"type": "RESIZE", "size": 40},
            {"type": "HORIZONTAL_FLIP_AUGMENT"},
        ],
        preprocessing_captioning_strategy="template",
        preprocessing_captioning_prompt="a product photo of {trigger}",
    )
    created = api.client.post(URL, json=body, headers=api.headers())
    assert created.status_code == 200, created.text
    training = _wait(api, created.json()["id"], lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"})
    assert training["status"] == "COMPLETED", training["logs"]
    assert training["progress"] == 100.0 and training["current_step"] == 24 and training["eta_seconds"] == 0
    assert training["processed_files_count"] == 2 and training["total_files_count"] == 2
    assert training["preprocessing_stage"] == "completed"
    assert training["started_at"] <= training["preprocessing_completed_at"] <= training["completed_at"]
    assert training["device"] == "cpu"
    assert "adamw" in training["logs"] and "bitsandbytes" in training["logs"]  # the optimizer fallback is logged
    assert "step 24/24" in training["logs"]

    dataset = training["processed_dataset_path"]
    manifest = json.loads(_read(api, f"{dataset}/manifest.json"))
    assert len(manifest) == 4  # two sources, each mirrored
    assert {item["caption"] for item in manifest} == {"a product photo of sks"}
    first = Image.open(io.BytesIO(_read(api, f"{dataset}/{manifest[0]['image']}")))
    assert first.size == (40, 40)  # cropped, padded square, resized

    from safetensors import safe_open

    lora = tmp = Path(api.settings.data_dir) / "lora.safetensors"
    tmp.write_bytes(_read(api, training["local_model_path"]))
    with safe_open(str(lora), framework="pt") as handle:
        assert len(list(handle.keys())) > 0 and (handle.metadata() or {}).get("atelier_step") == "24"
    assert [p.rsplit("/", 1)[-1] for p in training["checkpoints"]] == [
        "step_000008.safetensors",
        "step_000016.safetensors",
    ]
    for path in training["checkpoints"]:
        assert _read(api, path)[:8]  # uploaded
    assert len(training["samples"]) == 2 and all(_read(api, p)[:4] == b"\x89PNG" for p in training["samples"])
    losses = training["loss"]
    assert len(losses) == 24 and all(np.isfinite(losses)) and min(losses) > 0  # the loop's own losses, per step


def test_cancel_stops_the_loop_and_keeps_a_checkpoint(app_factory: AppFactory, sd_folder: Path) -> None:
    api = app_factory(training={"progress_interval_seconds": 0.0})
    body = _body(base_model_path=str(sd_folder), steps=5000, rank=2, resolution=16, save_every=0)
    training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
    _wait(api, training_id, lambda t: t["status"] == "TRAINING" and t["current_step"] >= 2)
    response = api.client.post(f"{URL}{training_id}/cancel", headers=api.headers())
    assert response.status_code == 200 and response.json()["status"] == "TRAINING"
    training = _wait(api, training_id, lambda t: t["status"] != "TRAINING", timeout=30)
    assert training["status"] == "CANCELLED"
    assert 2 <= training["current_step"] < 5000
    checkpoint = training["local_model_path"]
    assert checkpoint.startswith(f"training/{training_id}/checkpoints/step_")
    assert _read(api, checkpoint)
    assert "cancel requested" in training["logs"]


def test_a_missing_base_model_fails_clearly(app_factory: AppFactory, tmp_path: Path) -> None:
    api = app_factory()
    body = _body(base_model_path="someone/not-in-the-cache", steps=5)
    training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
    training = _wait(api, training_id, lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
    assert training["status"] == "FAILED"
    assert "not-in-the-cache" in training["error_message"] and "cache" in training["error_message"]
    assert training["error_category"] == "INVALID_INPUT"


def test_training_events_reach_the_webhook_in_order(app_factory: AppFactory, receiver: Receiver) -> None:  # noqa: F811
    api = app_factory(webhooks={"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST})
    body = _body(base_model_path="someone/not-in-the-cache", steps=5, webhook_url=receiver.url)
    training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
    events = receiver.wait_for(5)
    seen = [(e["event_type"], e["status"]) for e in events]
    assert seen == [
        ("TASK_CREATED", "PENDING"),
        ("PREPROCESSING_STATUS", "PREPROCESSING"),
        ("PREPROCESSING_STATUS", "COMPLETED"),
        ("TRAINING_STATUS", "TRAINING"),
        ("TRAINING_STATUS", "FAILED"),
    ]
    assert {e["task_id"] for e in events} == {training_id}
    assert [e["metadata"]["sequence"] for e in events] == [1, 2, 3, 4, 5]
    done = events[2]
    assert done["processed_files_count"] == 2 and done["total_files_count"] == 2 and done["processed_dataset_path"]
    assert "not-in-the-cache" in events[-1]["error_message"]


def test_a_flux_training_runs_through_the_api(app_factory: AppFactory, tmp_path: Path) -> None:
    from atelier.training.tiny import build_tiny_pipeline

    flux = build_tiny_pipeline(tmp_path / "flux", "flux", seed=0)
    api = app_factory()
    body = _body(base_model_path=str(flux), steps=6, rank=2, resolution=32, bypass_guidance_embedding=True)
    training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
    training = _wait(api, training_id, lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"})
    assert training["status"] == "COMPLETED", training["logs"]
    assert training["bypass_guidance_embedding"] is True and training["current_step"] == 6

    from safetensors import safe_open

    lora = tmp_path / "flux-lora.safetensors"
    lora.write_bytes(_read(api, training["local_model_path"]))
    with safe_open(str(lora), framework="pt") as handle:
        assert (handle.metadata() or {}).get("atelier_family") == "flux"
        assert all(key.startswith("transformer.") for key in handle.keys())  # noqa: SIM118 - not a dict


def _vlm_app(app_factory: AppFactory, llm: LLMFake) -> Api:
    return app_factory(
        providers={"openai": service(llm.base_url, llm.keys["openai"])},
        inputs={"allow_private_networks": ["127.0.0.1"]},
        training={"captioning_provider": "openai", "captioning_model": "gpt-4o-mini"},
    )


def test_vlm_captions_come_from_the_vision_model(app_factory: AppFactory, sd_folder: Path) -> None:
    with serve_fake(LLMFake(), create_llm_app) as llm:
        api = _vlm_app(app_factory, llm)
        prompt = "Describe the colour of this swatch."
        body = _body(
            base_model_path=str(sd_folder),
            steps=2,
            rank=2,
            resolution=16,
            preprocessing_captioning_strategy="vlm",
            preprocessing_captioning_prompt=prompt,
            preprocessing_transforms=[{"type": "HORIZONTAL_FLIP_AUGMENT"}],
        )
        training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
        training = _wait(api, training_id, lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"})
        assert training["status"] == "COMPLETED", training["logs"]
        manifest = json.loads(_read(api, f"{training['processed_dataset_path']}/manifest.json"))
        expected = f"sks, {answer_text('openai', prompt, 1, False)}"
        assert [item["caption"] for item in manifest] == [expected] * 4  # mirrored copies reuse their caption
        calls = [call for call in llm.calls if call.vendor == "openai"]
        assert len(calls) == 2  # one per source image, not per mirrored copy
        content = calls[0].body["messages"][-1]["content"]
        assert any(part.get("type") == "image_url" for part in content)
        assert calls[0].body["model"] == "gpt-4o-mini"


def test_a_refusing_vision_model_fails_the_training_truthfully(app_factory: AppFactory, sd_folder: Path) -> None:
    with serve_fake(LLMFake(script=["filtered"] * 10), create_llm_app) as llm:
        api = _vlm_app(app_factory, llm)
        body = _body(base_model_path=str(sd_folder), steps=2, preprocessing_captioning_strategy="vlm")
        training_id = api.client.post(URL, json=body, headers=api.headers()).json()["id"]
        training = _wait(api, training_id, lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"})
        assert training["status"] == "FAILED"
        assert training["error_message"].startswith("captioning failed")
        assert training["error_category"] == "CONTENT_REJECTED"
        assert training["preprocessing_stage"] == "captioning" and training["processed_dataset_path"] is None
