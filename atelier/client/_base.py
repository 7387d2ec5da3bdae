"""The I/O-free half of the SDK: settings, request descriptions, retry decisions and the SSE decoder.

``Client`` and ``AsyncClient`` are thin I/O shells over this module (the httpx layout): a resource method builds a
``Call`` (method, path, parameters, how to parse the answer) here, and the shell sends it, retrying as ``RetryPolicy``
says.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from atelier import __version__
from atelier.client.errors import REQUEST_ID_HEADER, TimeoutError, error_for, retry_after_seconds
from atelier.client.models import TERMINAL_TASK_STATUSES, EventType, Task, TaskEvent, TaskStatus, WaitProgress

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "ATELIER_URL"
TOKEN_ENV = "ATELIER_TOKEN"  # noqa: S105 - the name of the variable, not a secret
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({429, 503})
IdempotencyKey = str | Literal[False] | None
"""Per create: ``None`` = generate one (when the client's ``auto_idempotency`` is on), a string = use it,
``False`` = send none."""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    429 and 503 mean "nothing was done" on this API, so any request is retried after the server's ``Retry-After``
    (or an exponential backoff without one) — unless it asks for more than ``max_wait`` seconds, which is raised at
    once as ``RateLimited``/``ServiceUnavailable``. Connection errors are retried only for requests that are safe to
    repeat: reads, and creates that carry an ``Idempotency-Key``.
    """

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_wait: float = 60.0

    def delay_for_status(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retry ``attempt`` (1-based) after ``response``; None: do not retry."""
        if response.status_code not in RETRY_STATUSES or attempt > self.max_retries:
            return None
        after = retry_after_seconds(response)
        delay = self._backoff(attempt) if after is None else after
        return delay if delay <= self.max_wait else None

    def delay_for_connection_error(self, call: Call[Any], attempt: int) -> float | None:
        """Seconds to wait before retrying a request that got no answer; None: do not retry."""
        if attempt > self.max_retries or not call.repeatable:
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    files: Any = None
    data: Mapping[str, Any] | None = None
    repeatable: bool = False

    def request(self, client: httpx.Client | httpx.AsyncClient, config: Config) -> httpx.Request:
        """The httpx request (a fresh ``X-Request-ID`` each time, so every attempt can be told apart)."""
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        headers = {**config.headers(), **self.headers, REQUEST_ID_HEADER: uuid.uuid4().hex}
        for _name, content, *_rest in (self.files or {}).values():
            if hasattr(content, "seek"):  # a file object: a retry sends it again from the start
                content.seek(0)
        return client.build_request(
            self.method,
            config.base_url + self.path,
            params=params,
            json=self.json,
            headers=headers,
            files=self.files,
            data=self.data,
        )


@dataclass(frozen=True)
class Config:
    """Connection settings shared by ``Client`` and ``AsyncClient``."""

    base_url: str
    token: str | None
    timeout: httpx.Timeout
    retry: RetryPolicy
    auto_idempotency: bool

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        token: str | None,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy | None,
        auto_idempotency: bool,
    ) -> Config:
        """Arguments first, then ``ATELIER_URL`` / ``ATELIER_TOKEN``, then the local default URL."""
        url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        return cls(
            base_url=url,
            token=token if token is not None else os.environ.get(TOKEN_ENV) or None,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            retry=retry or RetryPolicy(),
            auto_idempotency=auto_idempotency,
        )

    def headers(self) -> dict[str, str]:
        """Headers of every request."""
        headers = {"User-Agent": f"atelier-python/{__version__}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def idempotency(self, key: IdempotencyKey) -> dict[str, str]:
        """The ``Idempotency-Key`` header of one create (one key for all its retries)."""
        if key is False or (key is None and not self.auto_idempotency):
            return {}
        return {IDEMPOTENCY_HEADER: key or f"atelier-py-{uuid.uuid4()}"}


def checked(response: httpx.Response) -> httpx.Response:
    """The response, or its error raised as the matching ``APIStatusError``."""
    if response.is_error:
        raise error_for(response)
    return response


def model(cls: type[M]) -> Callable[[httpx.Response], M]:
    """A parser reading the JSON body as ``cls``."""
    return lambda response: cls.model_validate_json(response.content)


def model_list(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    """A parser reading the JSON body as a list of ``cls``."""
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]
    return lambda response: list(adapter.validate_json(response.content))


def raw(response: httpx.Response) -> httpx.Response:
    """The response itself."""
    return response


def as_json(response: httpx.Response) -> Any:
    """The parsed JSON body."""
    return response.json()


def body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A request body from keyword fields: ``None`` values are left out (the server's defaults apply)."""
    return {k: v for k, v in fields.items() if v is not None}


def prefer(wait: int | None) -> dict[str, str]:
    """The ``Prefer: wait=N`` header (RFC 7240) when ``wait`` is set."""
    return {"Prefer": f"wait={int(wait)}"} if wait else {}


# --------------------------------------------------------------------------------------------- SSE


@dataclass
class SSEDecoder:
    """Turns the lines of a ``text/event-stream`` into ``TaskEvent``s (WHATWG server-sent events)."""

    last_event_id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, line: str) -> TaskEvent | None:
        """Consume one line (without its line break); returns the event a blank line completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # comment (keep-alive)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> TaskEvent | None:
        data, self._data = "\n".join(self._data), []
        event_id, self._id = self._id, None
        self._event = ""
        if event_id is not None:
            self.last_event_id = event_id
        if not data:
            return None
        event = TaskEvent.model_validate_json(data)
        if event_id is not None and event_id.isdigit():
            event = event.model_copy(update={"id": int(event_id)})
        return event


def sse_headers(last_event_id: str | None) -> dict[str, str]:
    """Headers of an event-stream request (resuming after ``last_event_id``)."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return headers


def sse_unavailable(response: httpx.Response) -> bool:
    """The server has no event stream for tasks (older server, a proxy that refuses it): poll instead."""
    if response.status_code in (404, 405, 406, 501):  # polling then tells a missing task (404) apart
        return True
    content_type = response.headers.get("content-type", "")
    return response.status_code == 200 and not content_type.startswith("text/event-stream")


# --------------------------------------------------------------------------------------------- waiting

SSE_READ_TIMEOUT = 30.0  # the server sends a keep-alive every 15 s of silence
POLL_FIRST_SECONDS = 0.1


def progress_of(task: Task) -> WaitProgress:
    """The progress report of a task just read."""
    pending = task.status == TaskStatus.PENDING
    return WaitProgress(
        task_id=task.id,
        status=task.status,
        progress=task.progress,
        queue_position=task.queue_position if pending else None,
        eta_seconds=task.eta_seconds,
    )


def advance(previous: WaitProgress, event: TaskEvent, *, since: datetime | None = None) -> WaitProgress:
    """The progress report after one streamed event.

    The stream replays a task's events from its first; those recorded before ``since`` (the ``updated_at`` of the
    task read that started the wait) are history that read already reflects: only their progress, which status
    frames give as the task's progress *now*, is news.
    """
    if since is not None and event.id is not None and event.created_at <= since:
        if event.progress is None:
            return previous
        return previous.model_copy(update={"progress": event.progress, "event": event})
    status = event.status or previous.status
    progress = event.progress if event.progress is not None else previous.progress
    pending = status == TaskStatus.PENDING
    return WaitProgress(
        task_id=previous.task_id,
        status=status,
        progress=progress,
        queue_position=previous.queue_position if pending else None,
        eta_seconds=previous.eta_seconds if pending else None,
        event=event,
    )


def is_terminal_event(event: TaskEvent) -> bool:
    """A status event of a finished task (the stream's last one, unless the task is run again)."""
    return event.event_type == EventType.TASK_STATUS and event.status in TERMINAL_TASK_STATUSES


class Deadline:
    """An optional overall time limit of a wait."""

    def __init__(self, timeout: float | None, what: str) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._what = what

    def remaining(self) -> float | None:
        """Seconds left (None: no limit); raises ``TimeoutError`` when none are."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self._what} did not finish within {self._timeout:g} s (it goes on running)")
        return left

    def cap(self, seconds: float) -> float:
        """``seconds``, shortened to what is left."""
        left = self.remaining()
        return seconds if left is None else min(seconds, left)
