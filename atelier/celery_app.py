"""``celery -A atelier.celery_app …`` (inspect, Flower, events) against the configured broker.

The app is built on first access, not at import, from the same ``ATELIER_*`` settings as ``atelier worker``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery


@cache
def _app() -> Celery:
    from atelier.engine.worker import worker_app
    from atelier.settings import Settings

    return worker_app(Settings())[1]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        return _app()
    raise AttributeError(name)
