"""Running one task: claim, call the provider outside any transaction, record the outcome.

Retry policy: ``ValueError``-class errors (bad input) fail at once; retryable and unexpected errors retry
with exponential backoff up to ``max_retries``; after that (or after a fatal provider error) the fallback
provider runs if one is configured; otherwise the task fails with a classified ``error_category``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image
from pydantic import ValidationError
from sqlalchemy import bindparam, update
from sqlalchemy.exc import DBAPIError, OperationalError

from atelier.core.db import JSONType, lock_for_write, retry_on_disconnect, session_scope, statement_connection
from atelier.core.errors import InvalidInputError
from atelier.core.inputs import DraftRequest, fetch_url, open_image
from atelier.core.time import utcnow
from atelier.engine.dispatch import Dispatch, enqueue
from atelier.monitoring import metrics
from atelier.providers.base import (
    ProviderContext,
    ProviderError,
    ProviderFatalError,
    ProviderResult,
    ProviderRetryableError,
    TaskCancelledError,
)
from atelier.providers.registry import config_model
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import OUTPUT_PREFIX, ErrorCategory, EventType, ProviderType, TaskStatus, TaskType
from atelier.tasks.lifetimes import expire_one
from atelier.tasks.models import Task
from atelier.tasks.transitions import WEBHOOK_COMMITTED, claim, complete_unchanged, record_event, transition

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from atelier.core.runtime import Runtime

log = logging.getLogger(__name__)


RECORD_PATIENCE_SECONDS = 60.0  # how long a finished attempt waits for an unreachable database to record


class LeaseLostError(Exception):
    """Another worker took the task over (our lease expired); stop without recording anything."""


class RunTimeoutError(Exception):
    """The attempt ran past the task's run timeout (raised by ``ctx.check_cancelled``)."""


@dataclass
class Plan:
    """A snapshot of what to run, taken inside the claim transaction."""

    task_id: uuid.UUID
    tenant: str
    task_type: TaskType
    provider_type: ProviderType | None
    provider_config: dict[str, Any] | None
    capabilities: list[str]
    inputs: dict[str, Any]
    task_config: dict[str, Any]
    attempt: int
    claimed_version: datetime  # ``updated_at`` right after the claim: unchanged means nobody else wrote
    service_requests: list[dict[str, Any]]
    service_task_id: str | None
    fallback_active: bool = False
    workflow_id: str | None = None
    run_timeout: float | None = None
    webhook: bool = False  # the task has a webhook_url: its events are flagged for the outbox
    created_at: datetime | None = None  # for the queue-wait metric

    def log_extra(self) -> dict[str, Any]:
        """The ids a log record of this run carries (``extra=``): task, tenant, workflow."""
        return {"task_id": str(self.task_id), "tenant": self.tenant, "workflow_id": self.workflow_id}


@dataclass
class Outcome:
    """What the provider run produced."""

    kind: str  # completed | cancelled | invalid | timeout | retryable | fatal | lease_lost
    message: str = ""
    category: ErrorCategory | None = None
    retry_after: float | None = None
    discard_remote: bool = False
    result: ProviderResult | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


def dispatch_for(task: Task, countdown: float | None = None, *, bursting: bool = False) -> Dispatch:
    """The Celery message that runs ``task`` (its id is recorded as ``celery_task_id``)."""
    message_id = uuid.uuid4().hex
    task.celery_task_id = message_id
    task.dispatched_at = utcnow()
    return Dispatch(task.id, task.queue_name, task.priority, message_id, countdown, bursting)


def backoff_seconds(retry_count: int, base: float, cap: float, retry_after: float | None) -> float:
    """Delay before retry ``retry_count`` (1-based): the provider's Retry-After, else base·2^(n-1)."""
    if retry_after is not None:
        return float(min(max(retry_after, 0.0), cap))
    return float(min(base * 2 ** max(retry_count - 1, 0), cap))


class TaskRunner:
    """Executes tasks for one runtime (one per process; safe to call from many worker threads)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def run(self, task_id: str, message_id: str | None = None) -> None:
        """Entry point of the ``tasks.run`` Celery task (``message_id``: the Celery task id of the message)."""
        try:
            tid = uuid.UUID(task_id)
        except ValueError:
            log.error("dropping message with malformed task id %r", task_id, extra={"task_id": task_id})
            return
        owner = f"{self.rt.worker_name}:{uuid.uuid4().hex[:8]}"
        plan = retry_on_disconnect(lambda: self._claim(tid, owner, message_id))
        if plan is None:
            log.debug("task %s not claimable; message dropped", tid, extra={"task_id": str(tid)})
            retry_on_disconnect(lambda: self._expire_if_overdue(tid))
            return
        started = time.monotonic()
        if plan.webhook:  # the claim (and its EXECUTING event) committed
            WEBHOOK_COMMITTED.fire()
        _observe_claim(plan)
        outcome = self._execute(plan, owner)
        recorded = self._record_patiently(plan, owner, outcome)
        _observe_outcome(plan, recorded, time.monotonic() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("task %s attempt %d: %s", plan.task_id, plan.attempt, recorded, extra=plan.log_extra())

    def _record_patiently(self, plan: Plan, owner: str, outcome: Outcome) -> str:
        """Record the outcome, waiting out a database outage of up to ``RECORD_PATIENCE_SECONDS``.

        The provider's work is done: giving up would leave the task EXECUTING until its lease expires and the
        reaper runs the provider again (a second side effect). Recording is conditional on our lease, so a
        repeat after a commit whose answer was lost, or after another worker took over, records nothing.
        """
        deadline = time.monotonic() + RECORD_PATIENCE_SECONDS
        delay = 0.1
        while True:
            try:
                return self._record(plan, owner, outcome)
            except DBAPIError as exc:
                unreachable = exc.connection_invalidated or isinstance(exc, OperationalError)
                if not unreachable or time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "task %s: database unreachable while recording (%s); retrying",
                    plan.task_id,
                    exc.orig,
                    extra=plan.log_extra(),
                )
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _expire_if_overdue(self, tid: uuid.UUID) -> None:
        """A refused claim may be a task past its queue-wait deadline: cancel it now rather than at the next sweep."""
        with session_scope(self.rt.sessions) as session:
            expire_one(session, tid, utcnow())

    def _claim(self, tid: uuid.UUID, owner: str, message_id: str | None) -> Plan | None:
        tasks = self.rt.settings.tasks
        task = claim(self.rt.engine, tid, owner, tasks.lease_seconds, tasks.max_resumes, message_id)
        if task is None:
            return None
        use_fallback = task.fallback_active
        return Plan(
            task_id=task.id,
            tenant=task.tenant_id,
            task_type=TaskType(task.task_type),
            provider_type=_provider(task.fallback_provider_type if use_fallback else task.provider_type),
            provider_config=task.fallback_provider_config if use_fallback else task.provider_config,
            capabilities=list(task.active_provider_capabilities or []),
            inputs=dict(task.task_data or {}),
            task_config=dict(task.config or {}),
            attempt=task.attempt,
            claimed_version=task.updated_at,
            service_requests=list(task.service_requests or []),
            service_task_id=task.service_task_id,
            fallback_active=use_fallback,
            workflow_id=task.workflow_id,
            run_timeout=task.run_timeout_seconds,
            webhook=task.webhook_url is not None,
            created_at=task.created_at,
        )

    # ------------------------------------------------------------------------------------ provider call

    def _execute(self, plan: Plan, owner: str) -> Outcome:
        requests: list[dict[str, Any]] = []
        try:
            result = self._call_provider(plan, owner, requests)
            outcome = Outcome("completed", result=result)
        except TaskCancelledError:
            outcome = Outcome("cancelled", "cancelled while running", ErrorCategory.CANCELLED)
        except LeaseLostError:
            outcome = Outcome("lease_lost")
        except RunTimeoutError:
            message = f"attempt exceeded its run timeout of {plan.run_timeout:g} s"
            outcome = Outcome("timeout", message, ErrorCategory.TIMEOUT)
        except (InvalidInputError, ValidationError, ValueError) as exc:
            outcome = Outcome("invalid", f"invalid input: {exc}", ErrorCategory.INVALID_INPUT)
        except ProviderRetryableError as exc:
            outcome = Outcome("retryable", str(exc), exc.category, exc.retry_after, exc.discard_remote)
        except ProviderFatalError as exc:
            outcome = Outcome("fatal", str(exc), exc.category, discard_remote=exc.discard_remote)
        except ProviderError as exc:
            outcome = Outcome("retryable", str(exc), exc.category, discard_remote=exc.discard_remote)
        except httpx.TimeoutException as exc:
            outcome = Outcome("retryable", f"timeout: {exc}", ErrorCategory.PROVIDER_TIMEOUT)
        except httpx.HTTPError as exc:
            outcome = Outcome("retryable", f"network error: {exc}", ErrorCategory.NETWORK_ERROR)
        except OSError as exc:
            outcome = Outcome("retryable", f"I/O error: {exc}", ErrorCategory.STORAGE_ERROR)
        except Exception as exc:  # unexpected bug or library failure: retried, then failed, never lost
            log.exception("task %s: unexpected error", plan.task_id, extra=plan.log_extra())
            outcome = Outcome("retryable", f"{type(exc).__name__}: {exc}", ErrorCategory.INTERNAL_ERROR)
        outcome.requests = requests
        return outcome

    def _call_provider(self, plan: Plan, owner: str, requests: list[dict[str, Any]]) -> ProviderResult:
        if plan.provider_type is None:
            raise ProviderFatalError(
                f"no provider_type for {plan.task_type.value} task",
                category=ErrorCategory.PROVIDER_NOT_AVAILABLE,
            )
        provider = self.rt.providers.get(plan.provider_type, plan.task_type)
        config = config_model(plan.provider_type).model_validate(plan.provider_config or {})
        probe = _Probe(self.rt, plan.task_id, owner, plan.run_timeout)
        ctx = self._context(plan, probe, config, requests)
        with _Heartbeat(probe, self._heartbeat_interval()):
            return provider.run(ctx)

    def _heartbeat_interval(self) -> float:
        tasks = self.rt.settings.tasks
        return tasks.heartbeat_seconds or tasks.lease_seconds / 3

    def _context(self, plan: Plan, probe: _Probe, config: Any, requests: list[dict[str, Any]]) -> ProviderContext:
        storage = TenantStorage(self.rt.storage, plan.tenant)
        return ProviderContext(
            task_id=plan.task_id,
            task_type=plan.task_type,
            inputs=plan.inputs,
            config=config,
            capabilities=plan.capabilities,
            task_config=plan.task_config,
            storage=storage,
            output_prefix=f"{OUTPUT_PREFIX[plan.task_type]}/{plan.task_id}",
            attempt=plan.attempt,
            http=self.rt.http,
            load_image=lambda source, field_name, draft=None: self._load_image(storage, source, field_name, draft),
            progress=probe.progress,
            check_cancelled=probe.check_cancelled,
            log_request=requests.append,
            remote_id=plan.service_task_id,
            save_remote_id=partial(self._save_remote_id, plan, probe),
            fetch_limits=self.rt.fetch_limits,
        )

    def _save_remote_id(self, plan: Plan, probe: _Probe, remote_id: str, config_field: str | None) -> None:
        config = dict(plan.provider_config or {})
        if config_field:
            config[config_field] = remote_id
        probe.save_remote(remote_id, config if config_field else None, plan.fallback_active)
        plan.service_task_id = remote_id
        plan.provider_config = config

    def _load_image(
        self, storage: TenantStorage, source: str, field_name: str, draft: DraftRequest | None = None
    ) -> Image.Image:
        limits = self.rt.fetch_limits
        loc = ("task_data", field_name)
        if source.lower().startswith(("http://", "https://")):
            data = fetch_url(source, limits=limits, client=self.rt.http, loc=loc)
        else:
            data = storage.read(source)
        return open_image(data, limits=limits, loc=loc, draft=draft)

    # ------------------------------------------------------------------------------------ recording

    def _record(self, plan: Plan, owner: str, outcome: Outcome) -> str:
        """Record the outcome; returns what was recorded (the ``outcome`` label of the outcomes metric)."""
        if outcome.kind == "lease_lost":
            log.warning(
                "task %s: lease lost to another worker; outcome discarded", plan.task_id, extra=plan.log_extra()
            )
            return "discarded"
        # A workflow step's completion plans the next steps in the same transaction: the general path.
        if outcome.kind == "completed" and not plan.workflow_id and self._complete_fast(plan, owner, outcome):
            if plan.webhook:
                WEBHOOK_COMMITTED.fire()
            return "completed"
        with session_scope(self.rt.sessions) as session:
            if plan.workflow_id:
                lock_for_write(session)
            task = session.get(Task, plan.task_id, with_for_update=True)
            if task is None or task.status != TaskStatus.EXECUTING or task.lease_owner != owner:
                log.warning(
                    "task %s changed hands while running; outcome discarded", plan.task_id, extra=plan.log_extra()
                )
                return "discarded"
            task.service_requests = [*(task.service_requests or []), *outcome.requests]
            was_fallback = task.fallback_active
            self._apply(session, task, outcome)
            recorded = _recorded(task, was_fallback)
        return recorded

    def _complete_fast(self, plan: Plan, owner: str, outcome: Outcome) -> bool:
        """The common case in one conditional UPDATE; False when the row changed since the claim."""
        assert outcome.result is not None
        return complete_unchanged(
            self.rt.engine,
            plan.task_id,
            owner,
            plan.claimed_version,
            task_data={**plan.inputs, **outcome.result.outputs},
            service_requests=[*plan.service_requests, *outcome.requests],
            service_task_id=outcome.result.service_task_id or plan.service_task_id,
            retention_seconds=self.rt.settings.tasks.retention_seconds,
        )

    def _apply(self, session: Session, task: Task, outcome: Outcome) -> None:
        if outcome.kind == "completed" and outcome.result is not None:
            task.task_data = {**(task.task_data or {}), **outcome.result.outputs}
            task.service_task_id = outcome.result.service_task_id or task.service_task_id
            transition(session, task, TaskStatus.COMPLETED, message="completed")
        elif outcome.kind == "cancelled" or task.cancel_requested:
            transition(session, task, TaskStatus.CANCELLED, message="cancelled", category=ErrorCategory.CANCELLED)
        elif outcome.kind in ("invalid", "timeout"):  # neither is retried nor handed to the fallback
            transition(session, task, TaskStatus.FAILED, message=outcome.message, category=outcome.category)
        else:
            self._retry_or_fail(session, task, outcome)

    def _retry_or_fail(self, session: Session, task: Task, outcome: Outcome) -> None:
        settings = self.rt.settings.tasks
        category = outcome.category or ErrorCategory.PROVIDER_ERROR
        if outcome.discard_remote:
            forget_remote_job(task)
        if outcome.kind == "retryable" and task.retry_count < task.max_retries:
            task.retry_count += 1
            delay = backoff_seconds(
                task.retry_count,
                settings.retry_backoff_seconds,
                settings.retry_backoff_max_seconds,
                outcome.retry_after,
            )
            message = f"attempt failed ({outcome.message}); retry {task.retry_count}/{task.max_retries} in {delay:g}s"
            transition(
                session,
                task,
                TaskStatus.PENDING,
                message=message,
                category=category,
                not_before=utcnow() + timedelta(seconds=delay),
            )
            record_event(session, task, EventType.TASK_RETRY_SCHEDULED, message, {"delay_seconds": delay})
            enqueue(session, dispatch_for(task, countdown=delay))
        elif task.fallback_provider_type and not task.fallback_active:
            forget_remote_job(task)
            task.fallback_active = True
            task.retry_count = 0
            task.active_provider_capabilities = task.fallback_provider_capabilities
            message = f"primary provider failed ({outcome.message}); fallback {task.fallback_provider_type} activated"
            transition(session, task, TaskStatus.PENDING, message=message, category=category)
            record_event(session, task, EventType.TASK_FALLBACK_ACTIVATED, message)
            enqueue(session, dispatch_for(task))
        else:
            transition(session, task, TaskStatus.FAILED, message=outcome.message, category=category)


def _recorded(task: Task, was_fallback: bool) -> str:
    """What ``_apply`` made of the attempt: completed, failed, cancelled, retried or fallback."""
    if task.status == TaskStatus.PENDING:
        return "fallback" if task.fallback_active and not was_fallback else "retried"
    return str(task.status).lower()


def _labels(plan: Plan) -> tuple[str, str | None]:
    return plan.task_type.value, plan.provider_type.value if plan.provider_type else None


def _observe_claim(plan: Plan) -> None:
    """Queue wait (created → first start), observed once per task: by its first attempt."""
    if plan.attempt == 1 and plan.created_at is not None:
        metrics.observe_task_wait(*_labels(plan), (plan.claimed_version - plan.created_at).total_seconds())


def _observe_outcome(plan: Plan, recorded: str, seconds: float) -> None:
    """The attempt's outcome and run time, once its recording committed."""
    task_type, provider_type = _labels(plan)
    metrics.observe_task_outcome(recorded, task_type, provider_type)
    metrics.observe_task_run(task_type, provider_type, seconds)


# Config fields in which providers mirror their remote job id (the spec's names).
REMOTE_ID_FIELDS = ("fal_request_id", "fashn_task_id")


def forget_remote_job(task: Task) -> None:
    """Drop the remote job id of the active provider so that its next attempt submits a new job."""
    task.service_task_id = None
    attr = "fallback_provider_config" if task.fallback_active else "provider_config"
    config = getattr(task, attr)
    if config and any(key in config for key in REMOTE_ID_FIELDS):
        setattr(task, attr, {k: v for k, v in config.items() if k not in REMOTE_ID_FIELDS})


_SAVE_REMOTE = (
    update(Task)
    .where(Task.id == bindparam("p_task_id"), Task.lease_owner == bindparam("p_owner"))
    .values(service_task_id=bindparam("p_remote_id"), updated_at=Task.updated_at)
    .returning(Task.id)
)

_BEAT = (
    update(Task)
    .where(Task.id == bindparam("p_task_id"), Task.lease_owner == bindparam("p_owner"))
    # A heartbeat is not a change of the task: keep ``updated_at`` (the claim's version stays valid).
    .values(heartbeat_at=bindparam("p_now"), lease_expires_at=bindparam("p_lease"), updated_at=Task.updated_at)
    .returning(Task.cancel_requested)
)
_BEAT_WITH_PROGRESS = _BEAT.values(progress=bindparam("p_progress"), updated_at=bindparam("p_now"))


class _Probe:
    """Progress reporting, lease heartbeat and cancellation checks for one running task.

    Every write is one ``UPDATE … RETURNING cancel_requested`` on a bare connection: it extends the lease,
    proves the lease is still ours and reads the cancel flag in a single round trip.
    """

    PROGRESS_INTERVAL = 0.5  # seconds between progress writes; a fast task writes none

    def __init__(self, runtime: Runtime, task_id: uuid.UUID, owner: str, run_timeout: float | None = None) -> None:
        self.rt = runtime
        self.task_id = task_id
        self.owner = owner
        self.lease_lost = False
        self.cancelled = False
        # The claim has just checked the flag: the first poll is due one interval from now.
        self._last_check = self._last_progress = time.monotonic()
        self.deadline = self._last_check + run_timeout if run_timeout else None

    def beat(self) -> None:
        """Extend the lease (the heartbeat thread calls this while the provider runs)."""
        self._touch(None)

    def progress(self, percent: float) -> None:
        """Record progress (0–100), at most every PROGRESS_INTERVAL seconds."""
        now = time.monotonic()
        if now - self._last_progress >= self.PROGRESS_INTERVAL:
            self._last_progress = self._last_check = now
            self._touch(max(0.0, min(100.0, float(percent))))

    def check_cancelled(self) -> None:
        """Raise TaskCancelledError if the cancel flag is set (polled at most every cancel_poll_seconds)."""
        now = time.monotonic()
        if (
            not (self.lease_lost or self.cancelled)
            and now - self._last_check >= self.rt.settings.tasks.cancel_poll_seconds
        ):
            self._last_check = now
            self._touch(None)
        if self.lease_lost:
            raise LeaseLostError()
        if self.cancelled:
            raise TaskCancelledError()
        if self.deadline is not None and now > self.deadline:
            raise RunTimeoutError()

    def save_remote(self, remote_id: str, config: dict[str, Any] | None, fallback_active: bool) -> None:
        """Persist the remote job id now, so that a worker that dies mid-poll leaves it to its successor."""
        stmt = _SAVE_REMOTE
        params: dict[str, Any] = {"p_task_id": self.task_id, "p_owner": self.owner, "p_remote_id": remote_id}
        if config is not None:
            column = "fallback_provider_config" if fallback_active else "provider_config"
            stmt = stmt.values({column: bindparam("p_config", type_=JSONType)})
            params["p_config"] = config
        with statement_connection(self.rt.engine) as conn:
            if conn.execute(stmt, params).scalar() is None:
                self.lease_lost = True
                raise LeaseLostError()

    def _touch(self, progress: float | None) -> None:
        now = utcnow()
        params = {
            "p_task_id": self.task_id,
            "p_owner": self.owner,
            "p_now": now,
            "p_lease": now + timedelta(seconds=self.rt.settings.tasks.lease_seconds),
        }
        stmt = _BEAT if progress is None else _BEAT_WITH_PROGRESS
        if progress is not None:
            params["p_progress"] = progress
        with statement_connection(self.rt.engine) as conn:
            flag = conn.execute(stmt, params).scalar()
        if flag is None:
            self.lease_lost = True
            raise LeaseLostError()
        self.cancelled = bool(flag)


class _Heartbeats:
    """One thread per process that keeps the leases of all running tasks alive, whatever their providers do.

    A thread per task cost a thread start and join on every run (most runs end long before their first
    beat). The thread is started lazily and again in a forked child, where the parent's thread does not exist.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # Also run in a forked child: the parent's thread is gone there, and its lock may have been held.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due: dict[int, tuple[_Probe, float, float]] = {}  # key -> (probe, interval, next beat time)
        self._next_key = 0
        self._pid: int | None = None
        # When the sleeping thread wakes by itself; -inf while it is awake (it plans its sleep under the lock and
        # sees every beat added until then). Waking it for a beat due later cost a thread switch per task.
        self._sleeping_until = -math.inf

    def add(self, probe: _Probe, interval: float) -> int:
        """Beat ``probe`` every ``interval`` seconds until ``remove``."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="lease-heartbeats", daemon=True).start()
            self._next_key += 1
            due = time.monotonic() + interval
            self._due[self._next_key] = (probe, interval, due)
            if due < self._sleeping_until:  # otherwise the thread wakes in time (or has yet to plan its sleep)
                self._wake.notify()
            return self._next_key

    def remove(self, key: int) -> None:
        """Stop beating (the run is over)."""
        with self._lock:
            self._due.pop(key, None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [(key, probe, interval) for key, (probe, interval, at) in self._due.items() if at <= now]
                for key, probe, interval in due:
                    self._due[key] = (probe, interval, now + interval)
                if not due:
                    wait = max(min((at for _p, _i, at in self._due.values()), default=now + 60.0) - now, 0.001)
                    self._sleeping_until = now + wait
                    self._wake.wait(timeout=wait)
                    self._sleeping_until = -math.inf
                    continue
            for key, probe, _interval in due:
                self._beat(key, probe)

    def _beat(self, key: int, probe: _Probe) -> None:
        try:
            probe.beat()
        except LeaseLostError:
            extra = {"task_id": str(probe.task_id)}
            log.warning("task %s: lease lost; the running attempt will be discarded", probe.task_id, extra=extra)
            self.remove(key)
        except Exception:  # a DB blip: the next beat retries; the lease has slack (3 beats per lease)
            log.warning(
                "task %s: heartbeat failed", probe.task_id, exc_info=True, extra={"task_id": str(probe.task_id)}
            )


_HEARTBEATS = _Heartbeats()
os.register_at_fork(after_in_child=_HEARTBEATS._reset)


class _Heartbeat:
    """Keeps the lease of one running task alive (through the process's heartbeat thread)."""

    def __init__(self, probe: _Probe, interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self._key = 0

    def __enter__(self) -> _Heartbeat:
        self._key = _HEARTBEATS.add(self.probe, self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        _HEARTBEATS.remove(self._key)


def _provider(value: str | None) -> ProviderType | None:
    return ProviderType(value) if value else None
