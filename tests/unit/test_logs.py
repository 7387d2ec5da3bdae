"""Log output: JSON lines with the task context, or the unchanged text lines."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.app.log import Logging as CeleryLogging
from celery.signals import setup_logging
from pydantic import ValidationError

from atelier.core import logs
from atelier.core.logs import configure_logging
from atelier.settings import Settings
from tests.conftest import Api

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING atelier\.test\.logs: careful: 3 left$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger (and Celery's signal): put both back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    setup_logging.disconnect(logs._keep_our_handlers)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def settings(**log: Any) -> Settings:
    return Settings(environment="test", log=log)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every output line, each parsed as JSON."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_core_fields_and_the_context_given_in_extra() -> None:
    stream = io.StringIO()
    configure_logging(settings(format="json"), stream)
    task_id = uuid.uuid4()
    log = logging.getLogger("atelier.test.logs")
    log.info("task %s claimed", task_id, extra={"task_id": task_id, "tenant": "acme", "workflow_id": None})
    log.warning("plain")

    first, second = lines(stream)
    assert first["message"] == f"task {task_id} claimed"
    assert first["level"] == "INFO"
    assert first["logger"] == "atelier.test.logs"
    assert first["task_id"] == str(task_id)
    assert first["tenant"] == "acme"
    assert "workflow_id" not in first  # None is left out
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", first["ts"])
    assert set(second) == {"ts", "level", "logger", "message"}


def test_json_exceptions_stay_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging(settings(format="json"), stream)
    try:
        raise RuntimeError("provider bug\nsecond line")
    except RuntimeError:
        logging.getLogger("atelier.test.logs").exception("unexpected", extra={"task_id": "t-1"})

    [line] = lines(stream)
    assert line["message"] == "unexpected"
    assert line["level"] == "ERROR"
    assert line["task_id"] == "t-1"
    assert line["exc"].startswith("Traceback") and "RuntimeError: provider bug" in line["exc"]


def test_the_level_setting_filters_records() -> None:
    stream = io.StringIO()
    configure_logging(settings(format="json", level="warning"), stream)
    log = logging.getLogger("atelier.test.logs")
    log.info("hidden")
    log.warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_text_format_is_the_usual_line() -> None:
    stream = io.StringIO()
    configure_logging(settings(), stream)
    logging.getLogger("atelier.test.logs").warning("careful: %d left", 3, extra={"task_id": "t-1"})
    [line] = stream.getvalue().splitlines()
    assert TEXT_LINE.match(line), line


def test_celery_worker_keeps_our_json_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery sets its logging up once per process (a class flag) and leaves hints in the environment.
    monkeypatch.setattr(CeleryLogging, "_setup", False)
    for name in ("_MP_FORK_LOGLEVEL_", "_MP_FORK_LOGFILE_", "_MP_FORK_LOGFORMAT_"):
        monkeypatch.delenv(name, raising=False)
    configure_logging(settings(format="json"), io.StringIO())
    ours = list(logging.getLogger().handlers)
    # what `atelier worker` (and each prefork child) does at start: without our receiver it replaces the handlers
    Celery("logs-json", set_as_current=False).log.setup_logging_subsystem(loglevel="INFO")
    assert logging.getLogger().handlers == ours


def test_unknown_levels_and_formats_are_refused() -> None:
    with pytest.raises(ValidationError):
        settings(level="LOUD")
    with pytest.raises(ValidationError):
        settings(format="xml")


def test_worker_log_records_carry_the_task_id(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="atelier.tasks.execution")
    task = api.create({"task_type": "GENERATION", "prompt": "x", "config": {"script": ["value"]}})
    assert api.wait(task["id"])["status"] == "FAILED"
    ours = [r for r in caplog.records if getattr(r, "task_id", None) == task["id"]]
    assert ours, [r.getMessage() for r in caplog.records]
    assert all(getattr(r, "tenant", None) == "acme" for r in ours)
