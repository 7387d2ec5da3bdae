"""On PostgreSQL a claim or completion and its event are one autocommit statement (no BEGIN/COMMIT)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import event, select

from atelier.core.db import session_scope, statement_connection
from atelier.tasks.models import TaskEvent
from atelier.tasks.transitions import claim, complete_unchanged
from tests.api.helpers import runtime_of
from tests.conftest import AppFactory, b64_png

pytestmark = pytest.mark.integration


def test_claim_and_complete_are_one_statement_each_with_their_events(app_factory: AppFactory, pg_url: str) -> None:
    api = app_factory(worker=False, database={"url": pg_url})
    task_id = uuid.UUID(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": b64_png(), "mode": "pad", "aspect_ratio": 1.0})["id"]
    )
    engine = runtime_of(api).engine
    statements: list[str] = []
    me = threading.get_ident()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == me:  # not the reaper's or the webhook loop's statements on the same engine
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with statement_connection(engine) as conn:
            claimed = claim(conn, task_id, "w1", 60, 3)
        assert claimed is not None and claimed.status == "EXECUTING"
        assert len(statements) == 1 and statements[0].lstrip().startswith("WITH claimed")
        with statement_connection(engine) as conn:
            assert claim(conn, task_id, "w2", 60, 3) is None  # a duplicate delivery changes nothing
        with statement_connection(engine) as conn:
            done = complete_unchanged(
                conn, task_id, "w1", claimed.updated_at, task_data={"x": 1}, service_requests=[], service_task_id=None
            )
        assert done
        assert len(statements) == 3
    finally:
        event.remove(engine, "before_cursor_execute", count)

    with session_scope(runtime_of(api).sessions) as session:
        events = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)).all()
        trail = [(e.event_type, e.status, e.message) for e in events]
    assert trail[-2:] == [("TASK_STATUS", "EXECUTING", "claimed by w1"), ("TASK_STATUS", "COMPLETED", "completed")]
    assert events[-1].data == {"from": "EXECUTING", "to": "COMPLETED"}
    assert api.get(str(task_id))["status"] == "COMPLETED"
