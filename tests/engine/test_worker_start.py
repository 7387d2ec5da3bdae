"""A worker's pool processes start ready: what every task run needs is built before the pool forks, and each new
pool process connects to the database before its first task."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from atelier.core.runtime import build_runtime
from atelier.engine.worker import start_pool_process
from tests.conftest import make_settings
from tests.fakes.server import free_port


def test_a_new_pool_process_connects_before_its_first_task(tmp_path: Path) -> None:
    runtime = build_runtime(make_settings(tmp_path / "data"), pre_ping=False)
    try:
        start_pool_process(runtime)
        # after_fork gave the engine a new, empty pool; the warm-up left one connection in it
        assert runtime.engine.pool.checkedin() == 1  # type: ignore[attr-defined]  # QueuePool
    finally:
        runtime.close()


def test_an_unreachable_database_does_not_stop_a_new_pool_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql+psycopg://atelier@127.0.0.1:{free_port()}/atelier"
    runtime = build_runtime(make_settings(tmp_path / "data", database={"url": url}), pre_ping=False)
    try:
        with caplog.at_level(logging.WARNING, logger="atelier.core.runtime"):
            start_pool_process(runtime)  # the first task connects (and retries) as usual
    finally:
        runtime.close()
    assert "database unreachable while starting a worker process" in caplog.text


def _run_fresh(script: str, tmp_path: Path, **settings: str) -> Any:
    """Run ``script`` in a new interpreter with test settings (plus ``settings``); the JSON of its last line."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")},
        "ATELIER_ENVIRONMENT": "test",
        "ATELIER_DATA_DIR": str(tmp_path / "data"),
        **settings,
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_builds_what_every_run_needs_before_its_pool_forks(tmp_path: Path) -> None:
    # A fresh interpreter: this one has long since loaded codecs and compiled statements in other tests.
    script = textwrap.dedent(
        """
        import json, mimetypes, sys
        from atelier.engine.worker import worker_app
        from atelier.settings import Settings
        from atelier.tasks.transitions import WORKER_STATEMENTS

        def state():
            return {
                "webp_codec": "PIL.WebPImagePlugin" in sys.modules,
                "mime_table": bool(mimetypes.inited),
                "statements_compiled": [s._sql is not None for s in WORKER_STATEMENTS],
            }

        before = state()
        runtime, _app = worker_app(Settings())
        print(json.dumps({"before": before, "after": state()}))
        runtime.close()
        """
    )
    # PostgreSQL's statements are the ones compiled ahead; building the engine does not connect.
    url = f"postgresql+psycopg://atelier@127.0.0.1:{free_port()}/atelier"
    states = _run_fresh(script, tmp_path, ATELIER_DATABASE__URL=url)
    assert states["before"] == {"webp_codec": False, "mime_table": False, "statements_compiled": [False, False]}
    assert states["after"] == {"webp_codec": True, "mime_table": True, "statements_compiled": [True, True]}


def test_the_main_process_freezes_its_objects_once_before_forking_the_pool(tmp_path: Path) -> None:
    # A fresh interpreter: freezing is for the worker's main process, not this test process.
    script = textwrap.dedent(
        """
        import gc, json, weakref
        from celery.signals import worker_before_create_process
        from atelier.engine.worker import worker_app
        from atelier.settings import Settings

        runtime, app = worker_app(Settings())
        before = gc.get_freeze_count()
        worker_before_create_process.send(sender=None)  # what Celery's prefork pool sends before each fork
        first = gc.get_freeze_count()
        worker_before_create_process.send(sender=None)  # a recycled child's replacement
        again = gc.get_freeze_count()

        class Node:
            pass

        cycle = Node()
        cycle.self = cycle  # garbage made after the freeze is still collected
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        print(json.dumps({"before": before, "first": first, "again": again, "cycle_collected": ref() is None}))
        runtime.close()
        """
    )
    counts = _run_fresh(script, tmp_path)
    assert counts["before"] == 0
    assert counts["first"] > 10_000  # the booted worker's modules, settings, runtime…
    assert counts["again"] == counts["first"]
    assert counts["cycle_collected"] is True
