"""The baseline of the status benchmark: a bare FastAPI + SQLAlchemy primary-key read, nothing else.

Reads the same ``tasks`` table of the same database as the service, through the same kind of engine and
pool, served by the same uvicorn settings, so the ratio measures what Atelier adds (auth, tenant filter,
public model) on top of the unavoidable work.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import text

from atelier.core.db import create_db_engine

engine = create_db_engine(os.environ["BENCH_DATABASE_URL"], pool_size=40)
app = FastAPI()


@app.get("/row/{row_id}")
def read_row(row_id: uuid.UUID) -> dict[str, Any]:
    """One primary-key read, returned as JSON."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, status, progress, created_at FROM tasks WHERE id = :id"),
            {"id": row_id.hex if engine.dialect.name == "sqlite" else row_id},
        ).first()
    if row is None:
        raise HTTPException(404)
    return {"id": str(row.id), "status": row.status, "progress": row.progress, "created_at": str(row.created_at)}
