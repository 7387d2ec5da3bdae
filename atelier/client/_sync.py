"""The synchronous client: ``Client`` and its resources (``client.tasks``, ``client.workflows``, …)."""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import httpx

from atelier.client import _calls
from atelier.client._base import (
    POLL_FIRST_SECONDS,
    SSE_READ_TIMEOUT,
    Call,
    Config,
    Deadline,
    IdempotencyKey,
    RetryPolicy,
    SSEDecoder,
    advance,
    checked,
    is_terminal_event,
    progress_of,
    sse_headers,
    sse_unavailable,
)
from atelier.client.errors import APIConnectionError, NotFound, TaskFailed
from atelier.client.models import (
    EvaluationResult,
    EvaluatorHealth,
    LoRADeleted,
    LoRAUpload,
    MonitoredTask,
    MonitoredTaskPage,
    MonitoringStats,
    QueueStatsList,
    StorageDeleted,
    StorageList,
    StorageObject,
    Task,
    TaskCleanup,
    TaskEvent,
    TaskStatus,
    TrainingTask,
    WaitProgress,
    WorkersHealth,
    WorkerStatsList,
    Workflow,
    WorkflowCleanup,
    WorkflowList,
)

T = TypeVar("T")
Id = uuid.UUID | str
ProgressCallback = Callable[[WaitProgress], None]


class Client:
    """A synchronous client of the Compute API.

    ``base_url`` and ``token`` default to ``ATELIER_URL`` / ``ATELIER_TOKEN`` (then ``http://127.0.0.1:8000``).
    Pass ``transport`` (any ``httpx.BaseTransport``) or a ready ``http_client`` (e.g. Starlette's ``TestClient``) to
    talk to an app in-process. Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        auto_idempotency: bool = True,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.config = Config.resolve(base_url, token, timeout, retry, auto_idempotency)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            transport=transport, timeout=self.config.timeout, follow_redirects=True
        )
        self.tasks = Tasks(self)
        self.workflows = Workflows(self)
        self.training = Training(self)
        self.storage = Storage(self)
        self.lora = Lora(self)
        self.evaluation = Evaluation(self)
        self.monitoring = Monitoring(self)

    def send(self, call: Call[T]) -> T:
        """Send ``call``, retrying 429/503 (and connection errors of repeatable calls) as the retry policy says."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.send(call.request(self._http, self.config))
            except httpx.TransportError as exc:
                delay = self.config.retry.delay_for_connection_error(call, attempt)
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.path}: {exc!r}") from exc
                time.sleep(delay)
                continue
            delay = self.config.retry.delay_for_status(response, attempt)
            if delay is None:
                return call.parse(checked(response))
            response.close()
            time.sleep(delay)

    @contextmanager
    def stream(self, path: str, headers: Mapping[str, str], read_timeout: float) -> Iterator[httpx.Response]:
        """A streamed GET (no retries; the caller decides)."""
        timeout = httpx.Timeout(self.config.timeout.connect or 10.0, read=read_timeout)
        request = self._http.build_request(
            "GET", self.config.base_url + path, headers={**self.config.headers(), **headers}, timeout=timeout
        )
        response = self._http.send(request, stream=True)
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        """Close the connection pool (unless the ``http_client`` was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Tasks(_Resource):
    """``/api/v1/tasks``: create, read, list, update, cancel, delete and wait for tasks."""

    def create(
        self,
        task_type: str,
        /,
        *,
        idempotency_key: IdempotencyKey = None,
        prefer_wait: int | None = None,
        **fields: Any,
    ) -> Task:
        """Create and start a task of ``task_type`` with ``fields`` (``None`` values are left out).

        An ``Idempotency-Key`` is generated (unless ``idempotency_key=False`` or the client's
        ``auto_idempotency=False``) and reused by every retry of this create, so a lost answer never makes a second
        task. ``prefer_wait=N`` asks the server to answer once the task finished (at most N seconds).
        """
        headers = self._client.config.idempotency(idempotency_key)
        return self._client.send(_calls.task_create(task_type, fields, headers, prefer_wait))

    def get(self, task_id: Id) -> Task:
        """Read one task (with ``queue_position``/``eta_seconds`` while it is PENDING)."""
        return self._client.send(_calls.task_get(task_id))

    def list(
        self,
        *,
        limit: int = 100,
        skip: int = 0,
        status: str | None = None,
        task_type: str | None = None,
        origin_instance: str | None = None,
        origin_zone: str | None = None,
        origin_tenant_id: str | None = None,
    ) -> list[Task]:
        """One page of tasks, newest first."""
        filters = {"limit": limit, "skip": skip, "status": status, "task_type": task_type}
        origins = {"origin_instance": origin_instance, "origin_zone": origin_zone, "origin_tenant_id": origin_tenant_id}
        return self._client.send(_calls.task_list({**filters, **origins}))

    def iter(self, *, page_size: int = 100, **filters: Any) -> Iterator[Task]:
        """Every matching task, newest first, fetching pages of ``page_size`` as needed (each task once)."""
        seen: set[uuid.UUID] = set()
        skip = 0
        while True:
            page = self.list(limit=page_size, skip=skip, **filters)
            for task in page:
                if task.id not in seen:
                    seen.add(task.id)
                    yield task
            if len(page) < page_size:
                return
            skip += page_size

    def list_all(self, *, page_size: int = 100, **filters: Any) -> builtins.list[Task]:
        """``list(iter(...))``: every matching task."""
        return list(self.iter(page_size=page_size, **filters))

    def update(self, task_id: Id, **fields: Any) -> Task:
        """Change a task (``status`` through the state machine, ``priority`` while PENDING, …)."""
        return self._client.send(_calls.task_update(task_id, fields))

    def delete(self, task_id: Id) -> Task:
        """Hard delete: the task's files, then its record. Returns the deleted task."""
        return self._client.send(_calls.task_delete(task_id))

    def cancel(self, task_id: Id) -> Task:
        """Cancel (PENDING at once; EXECUTING at the provider's next check). 409 once finished."""
        return self._client.send(_calls.task_cancel(task_id))

    def cleanup(self, task_id: Id) -> TaskCleanup:
        """Soft delete: files removed, record kept with ``is_deleted``."""
        return self._client.send(_calls.task_cleanup(task_id))

    def deliveries(self, task_id: Id, *, state: str | None = None, skip: int = 0, limit: int = 100) -> Any:
        """The task's webhook deliveries with their attempts (JSON)."""
        return self._client.send(_calls.task_deliveries(task_id, state, skip, limit))

    def events(
        self, task_id: Id, *, last_event_id: str | None = None, read_timeout: float = SSE_READ_TIMEOUT
    ) -> Iterator[TaskEvent]:
        """The task's events (server-sent events) from the first (or after ``last_event_id``) until it finishes."""
        headers = sse_headers(last_event_id)
        with self._client.stream(_calls.task_events_path(task_id), headers, read_timeout) as response:
            if response.status_code == 204:
                return
            if response.is_error:
                response.read()
            checked(response)
            decoder = SSEDecoder(last_event_id)
            for line in response.iter_lines():
                if (event := decoder.feed(line)) is not None:
                    yield event

    def wait(
        self,
        task_id: Id,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll_interval: float = 1.0,
        use_sse: bool = True,
        raise_on_failure: bool = False,
    ) -> Task:
        """Wait until the task is COMPLETED, FAILED or CANCELLED and return it.

        Follows the task's event stream (SSE) and falls back to polling every ``poll_interval`` seconds when the
        server or a proxy does not stream. While others are ahead of it in its queue it polls, so that
        ``on_progress`` sees the queue position move. Raises ``atelier.client.TimeoutError`` after ``timeout``
        seconds (the task keeps running) and, with ``raise_on_failure``, ``TaskFailed`` unless it COMPLETED.
        """
        deadline = Deadline(timeout, f"task {task_id}")
        task = self.get(task_id)
        report = on_progress or (lambda _progress: None)
        report(progress_of(task))
        if not task.finished and use_sse:
            if task.queue_position:
                task = self._poll(task, deadline, report, poll_interval, until_started=True)
            task = task if task.finished else (self._follow(task, deadline, report) or task)
        if not task.finished:
            task = self._poll(task, deadline, report, poll_interval)
        if raise_on_failure and task.status != TaskStatus.COMPLETED:
            raise TaskFailed(task)
        return task

    def _follow(self, task: Task, deadline: Deadline, report: ProgressCallback) -> Task | None:
        """Follow the event stream to the terminal event; None when the stream is unavailable (then poll)."""
        progress = progress_of(task)
        decoder = SSEDecoder()
        while True:
            read_timeout = deadline.cap(SSE_READ_TIMEOUT)
            headers = sse_headers(decoder.last_event_id)
            try:
                with self._client.stream(_calls.task_events_path(task.id), headers, read_timeout) as response:
                    if response.status_code == 204:
                        return self.get(task.id)
                    if response.status_code != 200 or sse_unavailable(response):
                        return None
                    for line in response.iter_lines():
                        if (event := decoder.feed(line)) is None:
                            continue
                        previous, progress = progress, advance(progress, event, since=task.updated_at)
                        if progress.model_dump(exclude={"event"}) != previous.model_dump(exclude={"event"}):
                            report(progress)
                        if is_terminal_event(event) and (latest := self.get(task.id)).finished:
                            return latest
                        deadline.remaining()
            except httpx.ReadTimeout:
                continue  # silence: reconnect after the last event seen (the deadline is checked first)
            except httpx.TransportError:
                return None

    def _poll(
        self,
        task: Task,
        deadline: Deadline,
        report: ProgressCallback,
        interval: float,
        *,
        until_started: bool = False,
    ) -> Task:
        """Read the task until it is finished (or, with ``until_started``, no longer PENDING)."""
        delay = min(POLL_FIRST_SECONDS, interval)
        last = progress_of(task)
        while not (task.finished or (until_started and task.status != TaskStatus.PENDING)):
            time.sleep(deadline.cap(delay))
            deadline.remaining()
            delay = min(delay * 2, interval)
            task = self.get(task.id)
            if (current := progress_of(task)) != last:
                last = current
                report(current)
        return task


class Workflows(_Resource):
    """``/api/v1/workflows``: DAGs of steps, each step an ordinary task."""

    def create(
        self,
        definition: Mapping[str, Any] | None = None,
        *,
        start: bool = True,
        idempotency_key: IdempotencyKey = None,
        prefer_wait: int | None = None,
        **fields: Any,
    ) -> Workflow:
        """Create (and by default start) a workflow from ``definition`` and/or keyword fields (name, steps, …)."""
        payload = {**(definition or {}), **fields}
        headers = self._client.config.idempotency(idempotency_key)
        return self._client.send(_calls.workflow_create(payload, start, headers, prefer_wait))

    def get(self, workflow_id: Id) -> Workflow:
        """Read a workflow with all its steps."""
        return self._client.send(_calls.workflow_get(workflow_id))

    def list(
        self,
        *,
        limit: int = 50,
        skip: int = 0,
        status: str | None = None,
        origin_instance: str | None = None,
        origin_tenant_id: str | None = None,
        include_deleted: bool = False,
    ) -> WorkflowList:
        """One page of workflows, newest first."""
        filters = {"limit": limit, "skip": skip, "status": status, "include_deleted": include_deleted}
        origins = {"origin_instance": origin_instance, "origin_tenant_id": origin_tenant_id}
        return self._client.send(_calls.workflow_list({**filters, **origins}))

    def iter(self, *, page_size: int = 50, **filters: Any) -> Iterator[Workflow]:
        """Every matching workflow, fetching pages as needed."""
        skip = 0
        while True:
            page = self.list(limit=page_size, skip=skip, **filters)
            yield from page.workflows
            skip += page_size
            if len(page.workflows) < page_size or skip >= page.total:
                return

    def update(self, workflow_id: Id, **fields: Any) -> Workflow:
        """Change ``name``, ``description`` or ``webhook_url``."""
        return self._client.send(_calls.workflow_update(workflow_id, fields))

    def start(self, workflow_id: Id) -> Workflow:
        """Start a workflow created with ``start=False``."""
        return self._client.send(_calls.workflow_action(workflow_id, "start"))

    def resume(self, workflow_id: Id) -> Workflow:
        """Run the failed, skipped and cancelled steps again."""
        return self._client.send(_calls.workflow_action(workflow_id, "resume"))

    def cancel(self, workflow_id: Id) -> Workflow:
        """Cancel (``DELETE``): running step tasks are cancelled, pending steps never start."""
        return self._client.send(_calls.workflow_action(workflow_id, "cancel"))

    def cleanup(self, workflow_id: Id, *, cleanup_tasks: bool = True) -> WorkflowCleanup:
        """Soft delete (and remove the step tasks' files)."""
        return self._client.send(_calls.workflow_cleanup(workflow_id, cleanup_tasks))

    def wait(
        self,
        workflow_id: Id,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Workflow], None] | None = None,
        poll_interval: float = 0.5,
    ) -> Workflow:
        """Poll until the workflow is COMPLETED, FAILED or CANCELLED; ``on_progress`` sees each change."""
        deadline = Deadline(timeout, f"workflow {workflow_id}")
        workflow = self.get(workflow_id)
        snapshot = workflow.model_dump_json(exclude={"updated_at"})
        if on_progress:
            on_progress(workflow)
        while not workflow.finished:
            time.sleep(deadline.cap(poll_interval))
            deadline.remaining()
            workflow = self.get(workflow_id)
            if on_progress and (current := workflow.model_dump_json(exclude={"updated_at"})) != snapshot:
                snapshot = current
                on_progress(workflow)
        return workflow


class Training(_Resource):
    """``/api/v1/training``: LoRA training tasks."""

    def create(self, trigger_word: str, **fields: Any) -> TrainingTask:
        """Create and start a training task (``TrainingTaskCreate`` fields)."""
        return self._client.send(_calls.training_create({"trigger_word": trigger_word, **fields}))

    def get(self, task_id: Id) -> TrainingTask:
        """Read a training task."""
        return self._client.send(_calls.training_get(task_id))

    def list(self, *, limit: int = 10, skip: int = 0) -> list[TrainingTask]:
        """One page of training tasks."""
        return self._client.send(_calls.training_list(limit, skip))

    def cancel(self, task_id: Id) -> TrainingTask:
        """Cancel a training task."""
        return self._client.send(_calls.training_cancel(task_id))

    def wait(
        self,
        task_id: Id,
        *,
        timeout: float | None = None,
        on_progress: Callable[[TrainingTask], None] | None = None,
        poll_interval: float = 2.0,
    ) -> TrainingTask:
        """Poll until the training is COMPLETED, FAILED or CANCELLED."""
        deadline = Deadline(timeout, f"training {task_id}")
        training = self.get(task_id)
        while True:
            if on_progress:
                on_progress(training)
            if training.finished:
                return training
            time.sleep(deadline.cap(poll_interval))
            deadline.remaining()
            training = self.get(task_id)


def _content(source: bytes | str | Path | IO[bytes]) -> tuple[bytes | IO[bytes], str]:
    """Upload content and a file name: bytes as they are, a path read from disk, a file object as it is."""
    if isinstance(source, bytes):
        return source, "upload"
    if isinstance(source, str | Path):
        path = Path(source)
        return path.read_bytes(), path.name
    return source, Path(str(getattr(source, "name", "upload"))).name


class Storage(_Resource):
    """``/api/v1/storage/images``: your tenant's files."""

    def list(self, prefix: str | None = None, *, limit: int = 100, start_after: str | None = None) -> StorageList:
        """One page of files in path order."""
        return self._client.send(_calls.storage_list(prefix, limit, start_after))

    def iter(self, prefix: str | None = None, *, page_size: int = 100) -> Iterator[StorageObject]:
        """Every file under ``prefix``, following ``next_start_after``."""
        start_after: str | None = None
        while True:
            page = self.list(prefix, limit=page_size, start_after=start_after)
            yield from page.items
            if not page.next_start_after:
                return
            start_after = page.next_start_after

    def download(self, path: str) -> bytes:
        """The file's bytes (a CDN/presigned redirect is followed)."""
        response: httpx.Response = self._client.send(_calls.storage_get(path))
        return response.content

    def download_to(self, path: str, destination: str | Path) -> Path:
        """Save the file at ``destination`` (a folder keeps the file's name)."""
        target = Path(destination)
        if target.is_dir():
            target = target / Path(path).name
        target.write_bytes(self.download(path))
        return target

    def exists(self, path: str) -> bool:
        """Whether the file exists (HEAD)."""
        try:
            self._client.send(_calls.storage_exists(path))
        except NotFound:
            return False
        return True

    def upload(
        self, path: str, content: bytes | str | Path | IO[bytes], *, content_type: str | None = None
    ) -> StorageObject:
        """Store ``content`` (bytes, a local path or a binary file) at ``path``."""
        data, filename = _content(content)
        return self._client.send(_calls.storage_put(path, data, filename, content_type))

    def delete(self, path: str) -> StorageDeleted:
        """Delete a file (404 when missing)."""
        return self._client.send(_calls.storage_delete(path))


class Lora(_Resource):
    """LoRA model files: shared assets under ``<entity_type>/``."""

    def upload(
        self,
        file: bytes | str | Path | IO[bytes],
        *,
        filename: str | None = None,
        entity_type: str | None = None,
        use_safe_filename: bool = True,
        admin: bool = False,
    ) -> LoRAUpload:
        """Upload a LoRA file; ``admin=True`` uses the admin upload (allows ``faces``)."""
        data, name = _content(file)
        return self._client.send(_calls.lora_upload(data, filename or name, entity_type, use_safe_filename, admin))

    def delete(self, partial_path: str) -> LoRADeleted:
        """Admin: move a LoRA file to the bin."""
        return self._client.send(_calls.lora_delete(partial_path))


class Evaluation(_Resource):
    """``/api/v1/evaluation``: image evaluation (framing, view angle, anatomy…)."""

    def evaluate(
        self, expected_framing: str, expected_view_angle: str, *, provider: str | None = None, **fields: Any
    ) -> EvaluationResult:
        """Evaluate an image (``image_data`` or ``image_url`` in ``fields``)."""
        payload = {"expected_framing": expected_framing, "expected_view_angle": expected_view_angle, **fields}
        return self._client.send(_calls.evaluation_evaluate(payload, provider))

    def health(self, *, provider: str | None = None) -> EvaluatorHealth:
        """The evaluator's health."""
        return self._client.send(_calls.evaluation_health(provider))


class Monitoring(_Resource):
    """``/api/v1/monitoring``: queues, workers, monitored tasks and counts."""

    def queues(self) -> QueueStatsList:
        """Per queue: depth, consumers, load, mean wait."""
        return self._client.send(_calls.monitoring_queues())

    def workers(self) -> WorkerStatsList:
        """Every worker: concurrency, load, memory."""
        return self._client.send(_calls.monitoring_workers())

    def workers_health(self) -> WorkersHealth:
        """Whether some worker has capacity, and which queues have none."""
        return self._client.send(_calls.monitoring_workers_health())

    def tasks(self, *, page: int = 1, page_size: int = 50, **filters: Any) -> MonitoredTaskPage:
        """One page of monitored tasks (filters as the API's query parameters)."""
        return self._client.send(_calls.monitoring_tasks({"page": page, "page_size": page_size, **filters}))

    def iter_tasks(self, *, page_size: int = 50, **filters: Any) -> Iterator[MonitoredTask]:
        """Every monitored task matching ``filters``, page after page."""
        page = 1
        while True:
            result = self.tasks(page=page, page_size=page_size, **filters)
            yield from result.items
            if page >= result.pages:
                return
            page += 1

    def stats(self, *, origin_instance: str | None = None, origin_zone: str | None = None) -> MonitoringStats:
        """Task counts by status, provider and type."""
        return self._client.send(_calls.monitoring_stats(origin_instance, origin_zone))
