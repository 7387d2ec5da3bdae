"""A full disk on output write: the task FAILS with STORAGE_ERROR, no partial file is left, other tasks are unaffected.

The tenant ``full`` lives on a volume with no space left: every write under ``tenants/full/`` gets half its bytes
out and then ENOSPC, at the file level below ``LocalStorage.save`` (which must clean up its temporary file).
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import pytest
from PIL import Image

from atelier.storage import backend
from tests.chaos.conftest import generation
from tests.conftest import AppFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class FullFile:
    """A file on a full disk: a write gets part of its bytes out, then fails with ENOSPC."""

    def __init__(self, real: IO[Any]) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        self.real.write(bytes(data[: len(data) // 2]))
        self.real.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def tell(self) -> int:
        return self.real.tell()

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


class FullVolume:
    """Stands in for the ``os`` and ``tempfile`` modules inside the storage backend only."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.paths: dict[int, str] = {}

    def mkstemp(self, **kwargs: Any) -> tuple[int, str]:
        fd, path = tempfile.mkstemp(**kwargs)
        self.paths[fd] = path
        return fd, path

    def fdopen(self, fd: int, mode: str) -> Any:
        real = os.fdopen(fd, mode)
        return FullFile(real) if self.marker in self.paths.pop(fd, "") else real

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_disk_full_on_output_write(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = FullVolume(f"{os.sep}tenants{os.sep}full{os.sep}")
    monkeypatch.setattr(backend, "os", volume)
    monkeypatch.setattr(backend, "tempfile", volume)
    api = app_factory(concurrency=4)
    doomed = [api.create(generation(0.05), tenant="full")["id"] for _ in range(3)]
    fine = [api.create(generation(0.05))["id"] for _ in range(3)]

    for task_id in doomed:
        task = api.wait(task_id, timeout=60, tenant="full")
        assert task["status"] == "FAILED"
        assert task["error_category"] == "STORAGE_ERROR"
        assert "No space left on device" in task["errors"][-1]
        assert task["result_image_path"] is None
    for task_id in fine:
        task = api.wait(task_id, timeout=60)
        assert task["status"] == "COMPLETED", task["errors"]
        image = api.client.get(f"/api/v1/storage/images/{task['result_image_path']}", headers=api.headers())
        assert Image.open(io.BytesIO(image.content)).size == (16, 16)  # a whole, readable file
        assert api.side_effects(task_id) == 1

    root: Path = api.settings.storage_root
    left = [p for p in root.rglob("*") if p.is_file() and p.name.startswith(backend.TEMP_PREFIX)]
    assert not left, f"partial temporary files left behind: {left}"
    assert not [p for p in (root / "tenants" / "full").rglob("*") if p.is_file()]  # nothing half-written
