"""What every protocol fake shares: a script of behaviours, one per submit or call (``ok`` once it runs out)."""

from __future__ import annotations

import threading
from typing import Any


class ScriptedFake:
    """Mixin for a fake's state dataclass, which declares ``script`` and ``lock``."""

    script: list[str]
    lock: threading.Lock

    def next_behaviour(self) -> str:
        """Pop the script's next behaviour (``ok`` once it is empty)."""
        with self.lock:
            return self.script.pop(0) if self.script else "ok"


class ScriptedJobsFake(ScriptedFake):
    """A scripted fake of an async-job protocol, whose ``jobs`` have a ``released`` flag for ``slow`` ones."""

    jobs: dict[str, Any]

    def release(self) -> None:
        """Let every ``slow`` job finish."""
        for job in self.jobs.values():
            job.released = True
