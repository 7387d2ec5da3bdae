"""``client.training`` and ``client.evaluation`` (and ``atelier train``) against the live API."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from atelier.cli import cli
from atelier.client import Conflict, UnprocessableEntity
from atelier.client.cli import EXIT_FAILED
from tests.client.conftest import Live
from tests.conftest import data_url


def test_training_lifecycle(live: Live) -> None:
    seen: list[str] = []
    with live.client() as client:
        with pytest.raises(UnprocessableEntity):
            client.training.create("sks", source_images=[])
        training = client.training.create(
            "sks", source_images=[data_url((48, 36), "red")], base_model_path="/nonexistent/base-model"
        )
        assert training.trigger_word == "sks" and training.training_type == "LORA"
        assert client.training.get(training.id).id == training.id
        assert [t.id for t in client.training.list()] == [training.id]
        done = client.training.wait(
            training.id, timeout=60, poll_interval=0.2, on_progress=lambda t: seen.append(t.status)
        )
        assert done.status == "FAILED" and done.finished and "does not exist" in (done.error_message or "")
        assert seen[-1] == "FAILED"
        with pytest.raises(Conflict):
            client.training.cancel(training.id)


def test_atelier_train_reports_a_failed_training(live: Live) -> None:
    env = {"ATELIER_URL": live.url, "ATELIER_TOKEN": live.token()}
    args = ["train", "sks", "-p", f"source_images={json.dumps([data_url((48, 36), 'blue')])}"]
    result = CliRunner().invoke(cli, [*args, "-p", "base_model_path=/nonexistent/model", "--wait", "--json"], env=env)
    assert result.exit_code == EXIT_FAILED, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["status"] == "FAILED"


def test_evaluation(live: Live) -> None:
    with live.client() as client:
        result = client.evaluation.evaluate("full_body", "front", image_data=data_url((64, 48)))
        assert result.success and result.human_detected is False and result.number_of_people == 0
        health = client.evaluation.health(provider="local")
        assert health.total_evaluations >= 1 and health.is_healthy
