"""Following a task from the HTTP side: the sync-mode wait of a create and the server-sent event stream.

Both poll the database with short reads, each on a connection taken from the pool for that read only, and sleep on
the event loop in between: a waiting client holds neither a connection nor a thread-pool thread.

- ``Prefer: wait=N`` (RFC 7240) on ``POST /api/v1/tasks/``: ``wait_preference`` parses the header, and
  ``wait_for_terminal`` polls the task (``read_task``, the hot status-read path) every 20 ms at first, backing off
  to 250 ms, until it is finished, the time is up or the client is gone.
- ``GET /api/v1/tasks/{id}/events``: ``poll`` reads the task's status/progress and the events after a cursor;
  ``EventFollower`` turns them into SSE frames (one per ``task_events`` row, ``id:`` = the row id, plus ``progress``
  frames, which have no id, when the progress column changes) and decides when the stream is over; ``stream`` is the
  async generator the endpoint returns.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Annotated, Any, TypeVar

from fastapi import Header, Query, Request
from pydantic import BaseModel
from sqlalchemy import Engine, Row, bindparam, select
from starlette.concurrency import run_in_threadpool

from atelier.core.auth import Principal
from atelier.core.errors import NotFoundError
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.tasks.enums import TERMINAL_STATUSES, EventType, TaskStatus
from atelier.tasks.models import Task, TaskEvent
from atelier.tasks.service import read_task

T = TypeVar("T")

# --------------------------------------------------------------------------------------------- Prefer: wait=N

PREFERENCE_APPLIED = "Preference-Applied"
WAIT_FIRST_POLL_SECONDS = 0.02
WAIT_MAX_POLL_SECONDS = 0.25
_BACKOFF = 1.5
_DIGITS = re.compile(r"[0-9]+")
_MAX_DIGITS = 9  # more is "forever" (capped anyway); int() of thousands of digits would raise


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside quoted strings (RFC 7230 quoted-string, backslash escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def wait_preference(headers: Iterable[str]) -> int | None:
    """The ``wait`` preference of the ``Prefer`` header(s), in whole seconds > 0; ``None`` if absent or malformed.

    RFC 7240: preferences are comma-separated (several headers count as one list), names are case-insensitive, the
    value is a token or quoted-string, parameters after ``;`` belong to the preference; only the first instance of a
    preference counts, and one that cannot be understood is ignored (never an error).
    """
    for preference in _split(",".join(headers), ","):
        name, equals, value = _split(preference, ";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        word = value.strip()
        if len(word) >= 2 and word[0] == word[-1] == '"':
            word = word[1:-1]
        if not equals or not _DIGITS.fullmatch(word):
            return None
        seconds = int(word) if len(word) <= _MAX_DIGITS else 10**_MAX_DIGITS
        return seconds if seconds > 0 else None
    return None


PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="Optional, RFC 7240. `wait=N` (whole seconds, N > 0): answer once the task (or workflow) is "
        "finished (COMPLETED, FAILED or CANCELLED) or after N seconds, whichever comes first; N is capped at "
        "`ATELIER_SERVER__MAX_SYNC_WAIT_SECONDS` (0 there disables waiting). A finished one is answered with "
        "`Preference-Applied: wait=<seconds applied>`; otherwise it is answered as it is then, without that "
        "header (poll `status_url` or stream `/api/v1/tasks/{id}/events`). Other preferences and a malformed `wait` "
        "are ignored. Idempotent replays wait the same way.",
    ),
]
SyncQuery = Annotated[
    bool,
    Query(
        description="Bria-style sync mode: `sync=true` is `Prefer: wait=<ATELIER_SERVER__MAX_SYNC_WAIT_SECONDS>` (an "
        "explicit `Prefer: wait` wins). The answer is the finished resource, or — if it did not finish in time — the "
        "usual async answer with `request_id`/`status_url`: the id is never lost."
    ),
]


def requested_wait(request: Request, max_seconds: int, *, sync: bool = False) -> int | None:
    """Seconds this create should wait: ``Prefer: wait=N`` (capped), else the cap when ``sync``; None: no wait."""
    wait = applied_wait(request.headers.getlist("prefer"), max_seconds)  # every Prefer header counts (RFC 7240)
    if wait is None and sync and max_seconds > 0:
        return max_seconds
    return wait


def applied_wait(headers: Iterable[str], max_seconds: int) -> int | None:
    """How long a create waits: the client's ``wait`` capped at ``max_seconds``; ``None``: no wait (0 disables)."""
    wanted = wait_preference(headers)
    if wanted is None or max_seconds <= 0:
        return None
    return min(wanted, max_seconds)


async def wait_until(
    read: Callable[[], T], finished: Callable[[T], bool], request: Request, seconds: float
) -> tuple[T | None, bool]:
    """Poll ``read`` until ``finished``, ``seconds`` have passed or the client disconnected.

    Returns the last value read (``None`` when none was; a resource deleted meanwhile ends the wait) and whether it
    is finished. Each read is one thread-pool hop with its own short-lived connection; the sleeps hold nothing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = WAIT_FIRST_POLL_SECONDS
    latest: T | None = None
    while (remaining := deadline - loop.time()) > 0:
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * _BACKOFF, WAIT_MAX_POLL_SECONDS)
        if await request.is_disconnected():
            break
        try:
            latest = await run_in_threadpool(read)
        except NotFoundError:  # deleted while we waited: answer what we had
            break
        if finished(latest):
            return latest, True
    return latest, False


async def wait_for_terminal(
    runtime: Runtime, principal: Principal, task_id: uuid.UUID, request: Request, seconds: float
) -> tuple[SimpleNamespace | None, bool]:
    """Poll the task until it is finished (see ``wait_until``)."""
    return await wait_until(
        lambda: read_task(runtime, principal, task_id),
        lambda task: TaskStatus(task.status) in TERMINAL_STATUSES,
        request,
        seconds,
    )


# --------------------------------------------------------------------------------------------- SSE

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
PROGRESS_EVENT = "progress"
TIMEOUT_EVENT = "timeout"
STREAM_POLL_SECONDS = 0.1
STREAM_IDLE_POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
KEEP_ALIVE = ": keep-alive\n\n"
BATCH = 500  # events per read; a full batch is followed by another read at once
_LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")

# Built once (see repository.py): the two reads of one poll.
_TASK_STATE = select(Task.status, Task.progress).where(
    Task.id == bindparam("task_id"), Task.tenant_id == bindparam("tenant")
)
_EVENTS_AFTER = (
    select(
        TaskEvent.id, TaskEvent.event_type, TaskEvent.status, TaskEvent.message, TaskEvent.data, TaskEvent.created_at
    )
    .where(
        TaskEvent.task_id == bindparam("task_id"),
        TaskEvent.tenant_id == bindparam("tenant"),
        TaskEvent.id > bindparam("after"),
    )
    .order_by(TaskEvent.id)
    .limit(BATCH)
)


def parse_last_event_id(value: str | None) -> int:
    """The event id to resume after; 0 (from the start) when absent or not an event id of ours."""
    text = (value or "").strip()
    return int(text) if _LAST_EVENT_ID.fullmatch(text) else 0


class StreamEvent(BaseModel):
    """The JSON ``data`` of one SSE frame."""

    event_type: str
    task_id: uuid.UUID
    status: str | None
    message: str | None = None
    data: Any = None
    created_at: datetime
    progress: float | None = None


@dataclass(frozen=True)
class Poll:
    """One look at a task: its status and progress (read first), then its events after the cursor."""

    status: str
    progress: float
    events: Sequence[Row[Any]]

    @property
    def full(self) -> bool:
        """The batch hit its limit: more events may be waiting."""
        return len(self.events) >= BATCH

    @property
    def over(self) -> bool:
        """Nothing left to stream: the task is finished and its terminal event is at or before the cursor."""
        return not self.events and _terminal(self.status)


def poll(engine: Engine, tenant: str, task_id: uuid.UUID, after: int) -> Poll | None:
    """Read the task, then its events with ``id > after``; ``None`` if the tenant has no such task.

    The task is read BEFORE the events: when it is terminal here, the event of that transition (written in the same
    transaction) is committed and therefore among the events read, or was read earlier.
    """
    params = {"task_id": task_id, "tenant": tenant}
    with engine.connect() as conn:
        state = conn.execute(_TASK_STATE, params).first()
        if state is None:
            return None
        events = conn.execute(_EVENTS_AFTER, {**params, "after": after}).all()
    return Poll(status=state.status, progress=state.progress, events=events)


def _frame(event: StreamEvent, *, event_id: int | None = None, include_progress: bool) -> str:
    data = event.model_dump_json(exclude=None if include_progress else {"progress"})
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event.event_type}\ndata: {data}\n\n"


_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)


def _terminal(status: str | None) -> bool:
    return status in _TERMINAL


@dataclass
class EventFollower:
    """Turns polls into SSE frames and decides when the stream is over (the state of one stream)."""

    task_id: uuid.UUID
    last_id: int = 0
    progress: float | None = field(default=None)

    def render(self, polled: Poll) -> tuple[str, bool]:
        """The frames of this poll (maybe empty) and whether the stream ends after them.

        It ends once the task is terminal and no event after its terminal one exists: the terminal event was sent now
        or before this stream (``Last-Event-ID`` at or past it). An event after a terminal one (a manual re-run) keeps
        the stream going.
        """
        frames: list[str] = []
        carried = any(row.event_type == EventType.TASK_STATUS.value for row in polled.events)
        if polled.status == TaskStatus.EXECUTING.value and not carried and polled.progress != self.progress:
            # Read before this batch's events, so it goes first.
            self.progress = polled.progress
            update = StreamEvent(
                event_type=PROGRESS_EVENT,
                task_id=self.task_id,
                status=polled.status,
                created_at=utcnow(),
                progress=polled.progress,
            )
            frames.append(_frame(update, include_progress=True))
        for row in polled.events:
            is_status = row.event_type == EventType.TASK_STATUS.value
            progress: float | None = None
            if is_status:  # a completion sets progress to 100 in the same transaction as its event
                progress = 100.0 if row.status == TaskStatus.COMPLETED.value else polled.progress
                self.progress = progress
            event = StreamEvent(
                event_type=row.event_type,
                task_id=self.task_id,
                status=row.status,
                message=row.message,
                data=row.data,
                created_at=row.created_at,
                progress=progress,
            )
            frames.append(_frame(event, event_id=row.id, include_progress=is_status))
            self.last_id = row.id
        ended = polled.over or (not polled.full and _terminal(polled.status) and _terminal(polled.events[-1].status))
        return "".join(frames), ended

    def timeout(self, polled: Poll, seconds: float) -> str:
        """The last frame of a stream that reached its maximum duration."""
        event = StreamEvent(
            event_type=TIMEOUT_EVENT,
            task_id=self.task_id,
            status=polled.status,
            message=f"stream closed after {seconds:g} s; reconnect with Last-Event-ID to continue",
            data={"last_event_id": self.last_id},
            created_at=utcnow(),
            progress=polled.progress,
        )
        return _frame(event, include_progress=True)


async def stream(
    runtime: Runtime, tenant: str, request: Request, follower: EventFollower, first: Poll
) -> AsyncIterator[str]:
    """The SSE body: frames of ``first``, then of a poll every 100 ms (500 ms when idle), heartbeats in silences.

    Ends after the terminal event, after ``server.sse_max_seconds`` (``event: timeout``), when the client disconnects
    or when the task is deleted.
    """
    loop = asyncio.get_running_loop()
    max_seconds = runtime.settings.server.sse_max_seconds
    deadline = loop.time() + max_seconds
    last_sent = loop.time()
    delay = STREAM_POLL_SECONDS
    current: Poll | None = first
    while current is not None:
        frames, ended = follower.render(current)
        now = loop.time()
        if frames:
            yield frames
            last_sent = now
            delay = STREAM_POLL_SECONDS
        if ended:
            return
        if now >= deadline:
            yield follower.timeout(current, max_seconds)
            return
        if now - last_sent >= HEARTBEAT_SECONDS:
            yield KEEP_ALIVE
            last_sent = now
        if not current.full:
            await asyncio.sleep(max(0.0, min(delay, deadline - now, last_sent + HEARTBEAT_SECONDS - now)))
            if not frames:
                delay = min(delay * _BACKOFF, STREAM_IDLE_POLL_SECONDS)
        if await request.is_disconnected():
            return
        current = await run_in_threadpool(poll, runtime.engine, tenant, follower.task_id, follower.last_id)
