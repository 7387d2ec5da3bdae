"""Log output of ``atelier serve`` and ``atelier worker``: human text lines or one JSON object per line.

JSON lines carry ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when the record has them (given
with ``extra={...}``), ``task_id``, ``workflow_id`` and ``tenant``; a logged exception adds ``exc`` (the
formatted traceback). Standard library only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import IO, Any

from celery.signals import setup_logging

from atelier.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("task_id", "workflow_id", "tenant")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (context fields only when present and not None)."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every record to ``stream`` (stderr) in the configured format and level; returns the handler.

    Replaces the root logger's handlers. In JSON mode Celery is also told to keep them: a receiver of its
    ``setup_logging`` signal stops ``atelier worker`` (and its prefork children) from installing its own text
    handlers. In text mode Celery's worker logging stays as it always was (its ``--loglevel``).
    """
    handler = logging.StreamHandler(stream)
    json_lines = settings.log.format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log.level.upper())
    if json_lines:
        setup_logging.connect(_keep_our_handlers, weak=False)
    return handler


def _keep_our_handlers(**_: object) -> None:
    """Celery ``setup_logging`` receiver: its presence alone makes Celery leave the logging configuration alone."""
