"""Task and workflow monitoring: lists with filters, search and sorting; details; media; aggregate counts.

Scope: a service or viewer token sees its tenant; an admin token sees every tenant. Lists are offset-paged with a
bounded count (``COUNT_CAP``) so a page answers in bounded time on large tables. Aggregate counts run one grouped
query (a scan of the tenant's rows) and are cached per process: fresh for ``STATS_TTL_SECONDS``, then served stale
while one background refresh runs, so only the first call of a process (per scope and filter) waits for the scan.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, lazyload

from atelier.core.auth import Principal, Role
from atelier.core.db import session_scope
from atelier.core.errors import NotFoundError
from atelier.core.runtime import Runtime
from atelier.core.time import utcnow
from atelier.monitoring.schemas import (
    AggregateStats,
    MediaItem,
    MonitoringWorkflowListResponse,
    SortOrder,
    TaskDetailResponse,
    TaskListItem,
    TaskListResponse,
    TaskMediaResponse,
    TaskSortField,
    WorkflowAggregateStats,
    WorkflowDetailResponse,
    WorkflowListItem,
    WorkflowSortField,
    WorkflowStepMonitor,
)
from atelier.status.views import media_url
from atelier.storage.service import TenantStorage
from atelier.tasks.models import Task
from atelier.workflows.models import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")

COUNT_CAP = 10_000
STATS_TTL_SECONDS = 5.0
OUTPUT_FIELDS = frozenset({"result_image_path", "result_image_paths", "result_video_path"})
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")


@dataclass(frozen=True)
class ListQuery:
    """Filters, search, sort and page of a monitoring list."""

    page: int = 1
    page_size: int = 50
    sort_by: str = "created_at"
    sort_order: SortOrder = SortOrder.desc
    status: str | None = None
    task_type: str | None = None
    provider_type: str | None = None
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    search: str | None = None


def duration_ms(started: datetime | None, completed: datetime | None) -> float | None:
    """Milliseconds from ``started`` to ``completed`` (None unless both are known)."""
    if started is None or completed is None:
        return None
    return round((completed - started).total_seconds() * 1000, 3)


def id_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The UUIDs that start with a hex ``prefix`` (dashes ignored) as an inclusive range; None if not hex.

    A range is what lets the primary-key index answer a prefix search (a text LIKE on the id could not).
    """
    digits = prefix.replace("-", "").strip().lower()
    if not digits or len(digits) > 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def _matching(q: ListQuery, created: Any, *equal: tuple[Any, str | None]) -> list[ColumnElement[bool]]:
    """The conditions of a list query: each given ``(column, value)`` equality, and the created window."""
    found: list[ColumnElement[bool]] = [column == value for column, value in equal if value is not None]
    if q.created_after is not None:
        found.append(created > q.created_after)
    if q.created_before is not None:
        found.append(created < q.created_before)
    return found


def _pages(total: int, page_size: int) -> int:
    return max(1, math.ceil(total / page_size))


class _StatsCache:
    """Per-process cache of aggregate counts: fresh for a TTL, then stale-while-revalidate (one refresh per key)."""

    def __init__(self) -> None:
        self._items: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._refreshing: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()

    def fetch(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """The cached value of ``key``; computed now when absent, refreshed in the background when stale."""
        with self._lock:
            found = self._items.get(key)
            stale = found is not None and time.monotonic() - found[0] >= STATS_TTL_SECONDS
            start_refresh = stale and key not in self._refreshing
            if start_refresh:
                self._refreshing.add(key)
        if found is None:
            value = compute()
            self._store(key, value)
            return value
        if start_refresh:
            threading.Thread(target=self._refresh, args=(key, compute), name="atelier-stats", daemon=True).start()
        cached: T = found[1]
        return cached

    def _store(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), value)

    def _refresh(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> None:
        try:
            self._store(key, compute())
        except Exception:  # the stale value stays; the next call tries again
            log.warning("refreshing monitoring stats failed", exc_info=True)
        finally:
            with self._lock:
                self._refreshing.discard(key)


_cache = _StatsCache()


class MonitoringService:
    """Monitoring reads for one principal."""

    def __init__(self, session: Session, principal: Principal, runtime: Runtime) -> None:
        self.session = session
        self.principal = principal
        self.runtime = runtime
        self.storage = runtime.storage

    @property
    def _all_tenants(self) -> bool:
        return self.principal.role is Role.ADMIN

    def _scoped(self, stmt: Any, tenant_column: InstrumentedAttribute[str]) -> Any:
        """``stmt`` limited to the principal's tenant (admins: every tenant)."""
        return stmt if self._all_tenants else stmt.where(tenant_column == self.principal.tenant)

    def _page(self, stmt: Select[Any], q: ListQuery) -> tuple[list[Any], int, bool]:
        bounded = stmt.order_by(None).limit(COUNT_CAP + 1).subquery()  # any COUNT_CAP+1 rows: no sort needed
        counted = self.session.scalar(select(func.count()).select_from(bounded)) or 0
        capped = counted > COUNT_CAP
        rows = list(self.session.execute(stmt.offset((q.page - 1) * q.page_size).limit(q.page_size)))
        return rows, min(counted, COUNT_CAP), capped

    @staticmethod
    def _sorted(stmt: Select[Any], column: Any, order: SortOrder, tie: Any) -> Select[Any]:
        # The index's own order (no NULLS clause: "DESC NULLS LAST" would not match an index and force a full sort).
        if order is SortOrder.asc:
            return stmt.order_by(column.asc(), tie.asc())
        return stmt.order_by(column.desc(), tie.desc())

    # ---------------------------------------------------------------------------------------------- tasks

    def list_tasks(self, q: ListQuery) -> TaskListResponse:
        """A page of tasks matching every given filter."""
        columns = (
            Task.id,
            Task.task_type,
            Task.status,
            Task.provider_type,
            Task.progress,
            Task.origin_instance,
            Task.origin_zone,
            Task.origin_tenant_id,
            Task.created_at,
            Task.started_at,
            Task.completed_at,
            Task.errors,
        )
        stmt = self._scoped(select(*columns), Task.tenant_id)
        conditions = _matching(
            q,
            Task.created_at,
            (Task.status, q.status),
            (Task.task_type, q.task_type),
            (Task.provider_type, q.provider_type),
            (Task.origin_instance, q.origin_instance),
            (Task.origin_zone, q.origin_zone),
            (Task.origin_tenant_id, q.origin_tenant_id),
        )
        if q.search:
            bounds = id_range(q.search)
            if bounds is None:
                return TaskListResponse(items=[], total=0, page=q.page, page_size=q.page_size, pages=1)
            conditions.append(Task.id.between(*bounds))
        stmt = self._sorted(
            stmt.where(*conditions), getattr(Task, TaskSortField(q.sort_by).value), q.sort_order, Task.id
        )
        rows, total, capped = self._page(stmt, q)
        items = [
            TaskListItem(
                id=r.id,
                task_type=r.task_type,
                status=r.status,
                provider_type=r.provider_type,
                progress=r.progress,
                origin_instance=r.origin_instance,
                origin_zone=r.origin_zone,
                origin_tenant_id=r.origin_tenant_id,
                created_at=r.created_at,
                started_at=r.started_at,
                completed_at=r.completed_at,
                duration_ms=duration_ms(r.started_at, r.completed_at),
                has_error=bool(r.errors),
            )
            for r in rows
        ]
        return TaskListResponse(
            items=items,
            total=total,
            page=q.page,
            page_size=q.page_size,
            pages=_pages(total, q.page_size),
            total_capped=capped,
        )

    def _task(self, task_id: uuid.UUID) -> Task:
        task: Task | None = self.session.scalars(
            self._scoped(select(Task).where(Task.id == task_id), Task.tenant_id)
        ).first()
        if task is None:
            raise NotFoundError(f"task {task_id} not found")
        return task

    def task_detail(self, task_id: uuid.UUID) -> TaskDetailResponse:
        """One task with its type-specific data and logs."""
        task = self._task(task_id)
        fields = {name: getattr(task, name) for name in TaskDetailResponse.model_fields if hasattr(task, name)}
        fields.update(duration_ms=duration_ms(task.started_at, task.completed_at), task_data=task.task_data or {})
        return TaskDetailResponse.model_validate(fields)

    def task_media(self, task_id: uuid.UUID, base: str) -> TaskMediaResponse:
        """The task's input and output files with URLs usable directly in a page."""
        task = self._task(task_id)
        storage = TenantStorage(self.storage, task.tenant_id)
        inputs: list[MediaItem] = []
        outputs: list[MediaItem] = []
        for key, value in (task.task_data or {}).items():
            if not key.endswith(("_path", "_paths")) or "model" in key or not value:
                continue
            stem = key.removesuffix("_paths").removesuffix("_path")
            paths = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
            target = outputs if key in OUTPUT_FIELDS else inputs
            for n, path in enumerate(paths):
                video = "video" in key or path.lower().endswith(VIDEO_SUFFIXES)
                target.append(
                    MediaItem(
                        name=stem if len(paths) == 1 else f"{stem}_{n + 1}",
                        path=path,
                        url=media_url(storage, base, path),
                        media_type="video" if video else "image",
                    )
                )
        return TaskMediaResponse(task_id=task.id, inputs=inputs, outputs=outputs)

    def stats(self, origin_instance: str | None, origin_zone: str | None) -> AggregateStats:
        """Counts by status, provider and type, and created in the last hour/day (see the module doc on caching)."""
        key = ("tasks", None if self._all_tenants else self.principal.tenant, origin_instance, origin_zone)
        return _cache.fetch(key, lambda: self._in_own_session(lambda s: s._task_stats(origin_instance, origin_zone)))

    def _in_own_session(self, work: Callable[[MonitoringService], T]) -> T:
        """Run ``work`` on a service with a session of its own (a background refresh outlives the request)."""
        with session_scope(self.runtime.sessions) as session:
            return work(MonitoringService(session, self.principal, self.runtime))

    def _created_recently(
        self, model: type[Task] | type[Workflow], tenant: Any, filters: list[ColumnElement[bool]]
    ) -> tuple[int, int]:
        """How many rows of ``model`` matching ``filters`` were created in the last hour and the last day."""
        now = utcnow()
        recent = self._scoped(select(func.count()).select_from(model).where(*filters), tenant)
        hour = self.session.scalar(recent.where(model.created_at >= now - timedelta(hours=1))) or 0
        day = self.session.scalar(recent.where(model.created_at >= now - timedelta(days=1))) or 0
        return int(hour), int(day)

    def _task_stats(self, origin_instance: str | None, origin_zone: str | None) -> AggregateStats:
        filters: list[ColumnElement[bool]] = []
        if origin_instance is not None:
            filters.append(Task.origin_instance == origin_instance)
        if origin_zone is not None:
            filters.append(Task.origin_zone == origin_zone)
        grouped = self._scoped(
            select(Task.status, Task.task_type, Task.provider_type, func.count()).where(*filters), Task.tenant_id
        ).group_by(Task.status, Task.task_type, Task.provider_type)
        result = AggregateStats(total_tasks=0)
        for status, task_type, provider, count in self.session.execute(grouped):
            result.total_tasks += count
            result.by_status[status] = result.by_status.get(status, 0) + count
            result.by_task_type[task_type] = result.by_task_type.get(task_type, 0) + count
            name = provider or "NONE"
            result.by_provider[name] = result.by_provider.get(name, 0) + count
        result.tasks_last_hour, result.tasks_last_24h = self._created_recently(Task, Task.tenant_id, filters)
        return result

    # ------------------------------------------------------------------------------------------- workflows

    def list_workflows(self, q: ListQuery) -> MonitoringWorkflowListResponse:
        """A page of workflows matching every given filter (``search``: name prefix or id prefix)."""
        listed = select(Workflow).where(Workflow.is_deleted.is_(False)).options(lazyload(Workflow.steps))
        stmt = self._scoped(listed, Workflow.tenant_id)
        conditions = _matching(
            q,
            Workflow.created_at,
            (Workflow.status, q.status),
            (Workflow.origin_instance, q.origin_instance),
            (Workflow.origin_zone, q.origin_zone),
            (Workflow.origin_tenant_id, q.origin_tenant_id),
        )
        if q.search:
            escaped = q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            matches: list[ColumnElement[bool]] = [Workflow.name.like(f"{escaped}%", escape="\\")]
            bounds = id_range(q.search)
            if bounds is not None:
                matches.append(Workflow.id.between(*bounds))
            conditions.append(or_(*matches))
        column = getattr(Workflow, WorkflowSortField(q.sort_by).value)
        stmt = self._sorted(stmt.where(*conditions), column, q.sort_order, Workflow.id)
        rows, total, capped = self._page(stmt, q)
        items = [self._workflow_item(row[0]) for row in rows]
        return MonitoringWorkflowListResponse(
            items=items,
            total=total,
            page=q.page,
            page_size=q.page_size,
            pages=_pages(total, q.page_size),
            total_capped=capped,
        )

    @staticmethod
    def _workflow_item(workflow: Workflow) -> WorkflowListItem:
        return WorkflowListItem(
            id=workflow.id,
            name=workflow.name,
            description=workflow.description,
            status=workflow.status,
            total_steps=workflow.total_steps,
            completed_steps=workflow.completed_steps,
            progress=workflow.progress,
            current_step=workflow.current_step,
            final_step_id=workflow.final_step_id,
            origin_instance=workflow.origin_instance,
            origin_zone=workflow.origin_zone,
            origin_tenant_id=workflow.origin_tenant_id,
            created_at=workflow.created_at,
            started_at=workflow.started_at,
            completed_at=workflow.completed_at,
            duration_ms=duration_ms(workflow.started_at, workflow.completed_at),
            has_error=bool(workflow.error_message or workflow.errors),
        )

    def workflow_stats(self, origin_instance: str | None, origin_zone: str | None) -> WorkflowAggregateStats:
        """Counts by status, created in the last hour/day, mean steps per workflow (cached like ``stats``)."""
        key = ("workflows", None if self._all_tenants else self.principal.tenant, origin_instance, origin_zone)
        return _cache.fetch(
            key, lambda: self._in_own_session(lambda s: s._workflow_stats(origin_instance, origin_zone))
        )

    def _workflow_stats(self, origin_instance: str | None, origin_zone: str | None) -> WorkflowAggregateStats:
        filters: list[ColumnElement[bool]] = [Workflow.is_deleted.is_(False)]
        if origin_instance is not None:
            filters.append(Workflow.origin_instance == origin_instance)
        if origin_zone is not None:
            filters.append(Workflow.origin_zone == origin_zone)
        grouped = self._scoped(
            select(Workflow.status, func.count(), func.sum(Workflow.total_steps)).where(*filters), Workflow.tenant_id
        ).group_by(Workflow.status)
        result = WorkflowAggregateStats(total_workflows=0)
        steps = 0
        for status, count, step_sum in self.session.execute(grouped):
            result.total_workflows += count
            result.by_status[status] = count
            steps += int(step_sum or 0)
        if result.total_workflows:
            result.avg_steps_per_workflow = round(steps / result.total_workflows, 3)
        counts = self._created_recently(Workflow, Workflow.tenant_id, filters)
        result.workflows_last_hour, result.workflows_last_24h = counts
        return result

    def workflow_detail(self, workflow_id: uuid.UUID) -> WorkflowDetailResponse:
        """One workflow with its steps in topological order."""
        stmt = self._scoped(select(Workflow).where(Workflow.id == workflow_id), Workflow.tenant_id)
        workflow = self.session.scalars(stmt).first()
        if workflow is None:
            raise NotFoundError(f"workflow {workflow_id} not found")
        steps = [
            WorkflowStepMonitor(
                id=s.id,
                step_id=s.step_id,
                task_type=s.task_type,
                status=s.status,
                task_id=s.task_id,
                config=s.config,
                dependencies=list(s.dependencies or []),
                input_mappings=list(s.input_mappings or []),
                result=s.result,
                error_message=s.error_message,
                retry_count=s.retry_count,
                max_retries=s.max_retries,
                started_at=s.started_at,
                completed_at=s.completed_at,
                duration_ms=duration_ms(s.started_at, s.completed_at),
            )
            for s in workflow.steps  # ordered by position: topological
        ]
        fields = {
            name: getattr(workflow, name) for name in WorkflowDetailResponse.model_fields if hasattr(workflow, name)
        }
        fields.update(
            steps=steps,
            duration_ms=duration_ms(workflow.started_at, workflow.completed_at),
            config=workflow.config or {},
            errors=list(workflow.errors or []),
        )
        return WorkflowDetailResponse.model_validate(fields)
