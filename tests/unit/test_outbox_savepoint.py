"""The outbox publishes after the real commit only: a SAVEPOINT release must not send anything."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import text

from atelier.core.db import create_db_engine, create_session_factory
from atelier.engine.dispatch import Dispatch, enqueue, install_outbox


def test_savepoint_release_does_not_publish(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    sessions = create_session_factory(engine)
    sent: list[uuid.UUID] = []
    install_outbox(sessions, lambda item: sent.append(item.task_id))
    first, second = uuid.uuid4(), uuid.uuid4()
    with sessions() as session:
        session.execute(text("select 1"))
        enqueue(session, Dispatch(first, "local", 0, "m1", None))
        with session.begin_nested():
            enqueue(session, Dispatch(second, "local", 0, "m2", None))
        assert sent == []  # released, but the outer transaction has not committed
        session.commit()
    assert sent == [first, second]
    engine.dispose()
