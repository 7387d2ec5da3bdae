"""A training whose worker is killed mid-loop resumes on another worker from its last checkpoint in storage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.conftest import ClusterFactory
from tests.training.test_training_api import _png

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(360)]
pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

URL = "/api/v1/training/"


def _poll(api: Any, training_id: str, until: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = api.client.get(f"{URL}{training_id}", headers=api.headers())
        assert response.status_code == 200, response.text
        training: dict[str, Any] = response.json()
        if until(training):
            return training
        if time.monotonic() > deadline:
            raise AssertionError(f"training stuck in {training['status']}: {training['logs'][-800:]}")
        time.sleep(0.1)


def test_killed_training_worker_resumes_from_the_last_checkpoint(redis_cluster: ClusterFactory, tmp_path: Path) -> None:
    from atelier.training.tiny import build_tiny_pipeline

    sd = build_tiny_pipeline(tmp_path / "sd", "sd", seed=0)
    cluster = redis_cluster(training={"progress_interval_seconds": 0.0})
    cluster.start_worker(concurrency=1)
    api = cluster.client()
    body = {
        "trigger_word": "sks",
        "source_images": [_png((220, 30, 30)), _png((30, 30, 220))],
        "base_model_path": str(sd),
        "steps": 60,
        "rank": 2,
        "resolution": 16,
        "save_every": 5,
        "max_step_saves_to_keep": 2,
    }
    created = api.client.post(URL, json=body, headers=api.headers())
    assert created.status_code == 200, created.text
    training_id = created.json()["id"]
    running = _poll(api, training_id, lambda t: t["status"] == "TRAINING" and len(t["checkpoints"]) >= 1, 150)
    assert running["current_step"] < 60
    cluster.kill_worker(0)  # kill -9 mid-loop: no checkpoint written at the stop, no status recorded
    cluster.start_worker(concurrency=1)
    done = _poll(api, training_id, lambda t: t["status"] in {"COMPLETED", "FAILED", "CANCELLED"}, 180)
    assert done["status"] == "COMPLETED", done["logs"][-1500:]
    assert done["is_resumed"] is True and done["resume_attempt_count"] == 1
    assert "resuming from step_" in done["logs"]
    assert done["current_step"] == 60 and done["local_model_path"].endswith("/lora.safetensors")
