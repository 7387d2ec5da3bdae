"""Every error category has a /v2/status error code (a missing one would turn a failed task into a 500)."""

from __future__ import annotations

from atelier.status.views import ERROR_CODES
from atelier.tasks.enums import ErrorCategory


def test_every_category_has_a_status_code() -> None:
    assert set(ERROR_CODES) == set(ErrorCategory)
    assert ERROR_CODES[ErrorCategory.QUEUE_TIMEOUT] == 408 and ERROR_CODES[ErrorCategory.TIMEOUT] == 504
