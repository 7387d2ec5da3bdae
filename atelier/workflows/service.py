"""Workflow operations and the engine step that advances a workflow when one of its tasks finishes.

Concurrency: everything that reads a workflow's steps to decide what happens next holds the workflow's row
lock (``SELECT … FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite, whose write lock is global),
so two step tasks finishing at once on different workers are planned one after the other: a fan-in step
is started exactly once. Dependants are started in the transaction that records the finished step, and
their Celery messages go out after that commit (the task outbox), so a worker dying between the two loses
nothing: either both happened or neither did, and the task's own recovery re-runs the completion.
"""

from __future__ import annotations

import logging
import typing
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from atelier.core.auth import Principal, Role
from atelier.core.db import lock_for_write
from atelier.core.errors import ConflictError, InvalidInputError, NotFoundError
from atelier.core.time import utcnow
from atelier.delivery.outbox import workflow_finished
from atelier.delivery.signing import check_webhook_url
from atelier.storage.service import TenantStorage
from atelier.tasks.enums import OUTPUT_PREFIX, TERMINAL_STATUSES, ProviderType, TaskStatus, TaskType
from atelier.tasks.models import Task
from atelier.tasks.schemas import PUBLIC_MODELS, TaskCreate
from atelier.tasks.service import TaskService, validate_provider_config
from atelier.workflows import planner
from atelier.workflows.models import Workflow, WorkflowStep
from atelier.workflows.planner import StepStatus, WorkflowStatus
from atelier.workflows.schemas import (
    CleanupError,
    CreateWorkflow,
    WorkflowCleanupResponse,
    WorkflowCleanupStats,
    WorkflowPublic,
    WorkflowUpdate,
)

if TYPE_CHECKING:
    from atelier.core.runtime import Runtime

log = logging.getLogger(__name__)

_UNION = typing.get_args(typing.get_args(TaskCreate)[0])
CREATE_MODELS: dict[TaskType, type[BaseModel]] = {
    TaskType(model.model_fields["task_type"].annotation.__args__[0]): model for model in _UNION
}
# Fields a step's task takes (its create schema) and produces (its public schema).
INPUT_FIELDS = {t.value: set(m.model_fields) - {"task_type"} for t, m in CREATE_MODELS.items()}
OUTPUT_FIELDS = {t.value: set(m.model_fields) for t, m in PUBLIC_MODELS.items()}
_TASK_CREATE: TypeAdapter[Any] = TypeAdapter(TaskCreate)
STEP_TERMINAL = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED})
WORKFLOW_TERMINAL = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})


def specs(workflow: Workflow) -> list[planner.StepSpec]:
    """The planner's view of a workflow's steps."""
    return [
        planner.StepSpec(
            step_id=step.step_id,
            task_type=step.task_type,
            config=dict(step.config or {}),
            depends_on=tuple(step.dependencies or ()),
            input_mappings=tuple(planner.Mapping(**m) for m in step.input_mappings or ()),
        )
        for step in workflow.steps
    ]


def states(workflow: Workflow) -> dict[str, planner.StepState]:
    """The planner's view of the steps' progress."""
    return {s.step_id: planner.StepState(StepStatus(s.status), s.result) for s in workflow.steps}


def public(workflow: Workflow) -> WorkflowPublic:
    """The API model (steps already in topological order)."""
    return WorkflowPublic.model_validate(workflow)


class WorkflowService:
    """Operations on one principal's workflows."""

    def __init__(self, session: Session, runtime: Runtime, principal: Principal) -> None:
        self.session = session
        self.rt = runtime
        self.principal = principal

    # ------------------------------------------------------------------------------------ create

    def create(self, body: CreateWorkflow, *, start: bool) -> Workflow:
        """Validate the whole DAG (422 naming the step and field; nothing written), store it, maybe start it."""
        self.principal.require_write()
        check_webhook_url(body.webhook_url, self.rt.settings, loc=("body", "webhook_url"))
        step_specs = [
            planner.StepSpec(
                step_id=s.id,
                task_type=s.task_type.value,
                config=s.config,
                depends_on=tuple(s.depends_on),
                input_mappings=tuple(planner.Mapping(**m.model_dump()) for m in s.input_mappings),
            )
            for s in body.steps
        ]
        try:
            planner.validate(step_specs, INPUT_FIELDS, OUTPUT_FIELDS)
        except planner.PlanError as exc:
            raise InvalidInputError(str(exc), loc=("body", *exc.loc)) from exc
        for index, step in enumerate(body.steps):
            self._check_step(index, step.model_dump(), {m.to_field for m in step.input_mappings})
        order = {step_id: n for n, step_id in enumerate(planner.topological_order(step_specs))}
        now = utcnow()
        workflow = Workflow(
            id=uuid.uuid4(),
            tenant_id=self.principal.tenant,
            name=body.name,
            description=body.description,
            status=WorkflowStatus.PENDING.value,
            config=body.config,
            suppress_subtask_events=body.suppress_subtask_events,
            total_steps=len(body.steps),
            completed_steps=0,
            progress=0.0,
            final_step_id=max(order, key=lambda step_id: order[step_id]),
            origin_instance=body.origin_instance,
            origin_zone=body.origin_zone,
            origin_tenant_id=body.origin_tenant_id,
            origin_reference=body.origin_reference,
            webhook_url=body.webhook_url,
            errors=[],
            created_at=now,
            updated_at=now,
        )
        for step in body.steps:
            workflow.steps.append(
                WorkflowStep(
                    step_id=step.id,
                    position=order[step.id],
                    task_type=step.task_type.value,
                    config=step.config,
                    provider_config=step.provider_config,
                    active_provider_capabilities=step.active_provider_capabilities,
                    fallback_provider_type=step.fallback_provider_type.value if step.fallback_provider_type else None,
                    fallback_provider_config=step.fallback_provider_config,
                    fallback_provider_capabilities=step.fallback_provider_capabilities,
                    dependencies=sorted(planner.dependencies(next(p for p in step_specs if p.step_id == step.id))),
                    input_mappings=[m.model_dump() for m in step.input_mappings],
                    status=StepStatus.PENDING.value,
                    max_retries=step.max_retries,
                    created_at=now,
                    updated_at=now,
                )
            )
        workflow.steps.sort(key=lambda s: s.position)
        self.session.add(workflow)
        self.session.flush()
        if start:
            self._start(workflow)
        return workflow

    def _check_step(self, index: int, step: dict[str, Any], mapped: set[str]) -> None:
        """Validate a step's task as far as its static inputs go (mapped fields arrive when it starts)."""
        loc = ("body", "steps", index)
        for key in step["config"]:
            if key not in INPUT_FIELDS[step["task_type"].value]:
                raise InvalidInputError(
                    f"step {step['id']!r}: {step['task_type'].value} tasks have no field {key!r}",
                    loc=(*loc, "config", key),
                )
        provider_type = (step["provider_config"] or {}).get("provider_type")
        try:
            provider = ProviderType(provider_type) if provider_type else None
        except ValueError as exc:
            raise InvalidInputError(
                f"step {step['id']!r}: unknown provider_type {provider_type!r}", loc=(*loc, "provider_config")
            ) from exc
        try:
            validate_provider_config(provider, step["provider_config"], "provider_config")
            validate_provider_config(
                step["fallback_provider_type"], step["fallback_provider_config"], "fallback_provider_config"
            )
        except InvalidInputError as exc:  # name the step: the task-level message only names the field
            raise InvalidInputError(f"step {step['id']!r}: {exc}", loc=(*loc, *exc.loc[1:])) from exc
        # Mapped fields arrive when the step starts: stand-ins let the rest (cross-field rules too) be checked now.
        stand_ins = dict.fromkeys(mapped, "mapped-input")
        try:
            _TASK_CREATE.validate_python(task_body(step, {**step["config"], **stand_ins}, None))
        except ValidationError as exc:
            for error in exc.errors():
                path = error["loc"][1:]  # drop the union tag
                if path and path[0] in mapped:
                    continue
                raise InvalidInputError(
                    f"step {step['id']!r}: {'.'.join(str(p) for p in path) or 'config'}: {error['msg']}",
                    loc=(*loc, "config", *path),
                ) from exc

    # ------------------------------------------------------------------------------------ reads

    def get(self, workflow_id: uuid.UUID, *, for_update: bool = False) -> Workflow:
        """One of the tenant's workflows (404 for others')."""
        if for_update:
            lock_for_write(self.session)
        stmt = select(Workflow).where(Workflow.id == workflow_id, Workflow.tenant_id == self.principal.tenant)
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        workflow = self.session.scalars(stmt).first()
        if workflow is None:
            raise NotFoundError(f"workflow {workflow_id} not found")
        return workflow

    def list(
        self,
        *,
        limit: int,
        skip: int,
        status: WorkflowStatus | None = None,
        origin_instance: str | None = None,
        origin_tenant_id: str | None = None,
        include_deleted: bool = False,
    ) -> tuple[Sequence[Workflow], int]:
        """Newest first, filtered; soft-deleted hidden unless asked for."""
        conditions = [Workflow.tenant_id == self.principal.tenant]
        if status is not None:
            conditions.append(Workflow.status == status.value)
        if origin_instance is not None:
            conditions.append(Workflow.origin_instance == origin_instance)
        if origin_tenant_id is not None:
            conditions.append(Workflow.origin_tenant_id == origin_tenant_id)
        if not include_deleted:
            conditions.append(Workflow.is_deleted.is_(False))
        total = self.session.scalar(select(func.count()).select_from(Workflow).where(*conditions)) or 0
        rows = self.session.scalars(
            select(Workflow)
            .where(*conditions)
            .order_by(Workflow.created_at.desc(), Workflow.id.desc())
            .offset(skip)
            .limit(limit)
        ).all()
        return rows, total

    # ------------------------------------------------------------------------------------ changes

    def update(self, workflow_id: uuid.UUID, body: WorkflowUpdate) -> Workflow:
        """PATCH name/description/webhook_url."""
        self.principal.require_write()
        workflow = self.get(workflow_id, for_update=True)
        check_webhook_url(body.webhook_url, self.rt.settings, loc=("body", "webhook_url"))
        for key, value in body.model_dump(exclude_unset=True).items():
            if key == "name" and value is None:
                raise InvalidInputError("name cannot be null", loc=("body", "name"))
            setattr(workflow, key, value)
        workflow.updated_at = utcnow()
        self.session.flush()
        return workflow

    def start(self, workflow_id: uuid.UUID) -> Workflow:
        """PENDING → RUNNING: the root steps' tasks are created (published after commit)."""
        self.principal.require_write()
        workflow = self.get(workflow_id, for_update=True)
        self._require(workflow, {WorkflowStatus.PENDING}, "started")
        self._start(workflow)
        return workflow

    def _start(self, workflow: Workflow) -> None:
        now = utcnow()
        workflow.status = WorkflowStatus.RUNNING.value
        workflow.started_at = workflow.started_at or now
        workflow.updated_at = now
        advance(self.session, self.rt, workflow)

    def cancel(self, workflow_id: uuid.UUID) -> Workflow:
        """PENDING/RUNNING → CANCELLED: pending steps never start, running step tasks are cancelled."""
        self.principal.require_write()
        workflow = self._lock_with_tasks(workflow_id)
        self._require(workflow, {WorkflowStatus.PENDING, WorkflowStatus.RUNNING}, "cancelled")
        now = utcnow()
        workflow.status = WorkflowStatus.CANCELLED.value
        workflow.completed_at = workflow.updated_at = now
        tasks = TaskService(self.session, self.rt, self._actor(workflow))
        for step in workflow.steps:
            if step.status == StepStatus.RUNNING.value and step.task_id is not None:
                task = self.session.get(Task, step.task_id, with_for_update=True)
                if task is not None and task.status not in {s.value for s in TERMINAL_STATUSES}:
                    tasks._cancel(task)  # PENDING: cancelled now; EXECUTING: the provider stops at its next check
            if step.status in (StepStatus.PENDING.value, StepStatus.RUNNING.value):
                step.status = StepStatus.CANCELLED.value
                step.completed_at = step.updated_at = now
        _summarise(self.session, self.rt, workflow, WorkflowStatus.CANCELLED, [], now)
        self.session.flush()
        return workflow

    def resume(self, workflow_id: uuid.UUID) -> Workflow:
        """FAILED/PAUSED → RUNNING: failed, cancelled, skipped and running steps are reset; completed ones kept."""
        self.principal.require_write()
        workflow = self._lock_with_tasks(workflow_id)
        self._require(workflow, {WorkflowStatus.FAILED, WorkflowStatus.PAUSED}, "resumed")
        now = utcnow()
        for step in workflow.steps:
            if step.status != StepStatus.COMPLETED.value:
                if step.status == StepStatus.RUNNING.value and step.task_id is not None:
                    task = self.session.get(Task, step.task_id, with_for_update=True)
                    if task is not None and task.status not in {s.value for s in TERMINAL_STATUSES}:
                        TaskService(self.session, self.rt, self._actor(workflow))._cancel(task)
                step.status = StepStatus.PENDING.value
                step.task_id = None
                step.retry_count = 0
                step.error_message = None
                step.result = None
                step.started_at = step.completed_at = None
                step.updated_at = now
        workflow.error_message = None
        workflow.completed_at = None
        self._start(workflow)
        return workflow

    def cleanup(self, workflow_id: uuid.UUID, *, cleanup_tasks: bool) -> WorkflowCleanupResponse:
        """Soft delete; with ``cleanup_tasks`` also delete every step task's files and soft-delete the tasks."""
        self.principal.require_write()
        workflow = self.get(workflow_id, for_update=True)
        if workflow.status in (WorkflowStatus.RUNNING.value, WorkflowStatus.PENDING.value) and any(
            s.status == StepStatus.RUNNING.value for s in workflow.steps
        ):
            raise ConflictError(f"workflow {workflow.id} is {workflow.status}; cancel it before cleaning it up")
        stats = WorkflowCleanupStats()
        if cleanup_tasks:
            storage = TenantStorage(self.rt.storage, workflow.tenant_id)
            step_of = {s.task_id: s.step_id for s in workflow.steps if s.task_id is not None}
            tasks = self.session.scalars(
                select(Task)
                .where(Task.workflow_id == str(workflow.id), Task.tenant_id == workflow.tenant_id)
                .order_by(Task.created_at)
            ).all()  # every task the workflow ever ran, including those a resume replaced
            for task in tasks:
                stats.tasks_processed += 1
                try:
                    stats.deleted_paths += storage.delete_prefix(f"{OUTPUT_PREFIX[TaskType(task.task_type)]}/{task.id}")
                except Exception as exc:  # one task's storage error must not stop the others
                    step_id = step_of.get(task.id, "(replaced)")
                    error = CleanupError(task_id=task.id, step_id=step_id, task_type=task.task_type, error=str(exc))
                    stats.errors.append(error)
                    continue
                task.is_deleted = True
                task.deleted_at = task.updated_at = utcnow()
                stats.tasks_cleaned += 1
        workflow.is_deleted = True
        workflow.deleted_at = workflow.updated_at = utcnow()
        self.session.flush()
        return WorkflowCleanupResponse(workflow=public(workflow), cleanup=stats)

    def _lock_with_tasks(self, workflow_id: uuid.UUID) -> Workflow:
        """Lock the running steps' task rows, then the workflow row: the order a finishing worker uses.

        A worker recording a step's outcome holds the task row and then takes the workflow row (the transition
        hook); locking in the other order here would deadlock with it.
        """
        lock_for_write(self.session)
        running = self.session.scalars(
            select(WorkflowStep.task_id).where(
                WorkflowStep.workflow_id == workflow_id,
                WorkflowStep.status == StepStatus.RUNNING.value,
                WorkflowStep.task_id.is_not(None),
            )
        ).all()
        if running:
            self.session.execute(select(Task.id).where(Task.id.in_(running)).order_by(Task.id).with_for_update())
        return self.get(workflow_id, for_update=True)

    def _require(self, workflow: Workflow, allowed: set[WorkflowStatus], verb: str) -> None:
        if workflow.status not in {s.value for s in allowed}:
            wanted = " or ".join(sorted(s.value for s in allowed))
            raise ConflictError(f"workflow {workflow.id} is {workflow.status}; only {wanted} workflows can be {verb}")

    @staticmethod
    def _actor(workflow: Workflow) -> Principal:
        return Principal(subject=f"workflow:{workflow.id}", tenant=workflow.tenant_id, role=Role.SERVICE)


# ---------------------------------------------------------------------------------------------- engine


def task_body(step: dict[str, Any], inputs: dict[str, Any], workflow: Workflow | None) -> dict[str, Any]:
    """The create body of a step's task: its inputs plus the step's provider settings and the workflow's origin."""
    body = {k: v for k, v in inputs.items() if k != "config"}
    body["task_type"] = step["task_type"].value if isinstance(step["task_type"], TaskType) else step["task_type"]
    task_config = dict(inputs.get("config") or {})
    if step.get("max_retries") is not None:
        task_config["max_retries"] = step["max_retries"]
    if task_config:
        body["config"] = task_config
    provider_config = step.get("provider_config")
    if provider_config:
        body["provider_config"] = provider_config
        if provider_config.get("provider_type"):
            body["provider_type"] = provider_config["provider_type"]
    for key in ("active_provider_capabilities", "fallback_provider_config", "fallback_provider_capabilities"):
        if step.get(key) is not None:
            body[key] = step[key]
    fallback = step.get("fallback_provider_type")
    if fallback:
        body["fallback_provider_type"] = fallback.value if isinstance(fallback, ProviderType) else fallback
    if workflow is not None:
        # suppress_subtask_events: step tasks send no webhooks; otherwise they report to the workflow's URL
        # unless the step names its own.
        own = body.get("webhook_url")
        body["webhook_url"] = None if workflow.suppress_subtask_events else (own or workflow.webhook_url)
        body["origin_instance"] = workflow.origin_instance
        for key in ("origin_zone", "origin_tenant_id", "origin_reference"):
            if getattr(workflow, key) is not None:
                body[key] = getattr(workflow, key)
    return body


def _step_dict(step: WorkflowStep) -> dict[str, Any]:
    return {
        "id": step.step_id,
        "task_type": step.task_type,
        "max_retries": step.max_retries,
        "provider_config": step.provider_config,
        "active_provider_capabilities": step.active_provider_capabilities,
        "fallback_provider_type": step.fallback_provider_type,
        "fallback_provider_config": step.fallback_provider_config,
        "fallback_provider_capabilities": step.fallback_provider_capabilities,
    }


def advance(session: Session, runtime: Runtime, workflow: Workflow) -> None:
    """Plan the workflow (lock held): skip what cannot run, start what is ready, derive the workflow status.

    Planning repeats until it settles: a step refused at start fails, which skips its dependants, which may
    settle the workflow.
    """
    if workflow.status != WorkflowStatus.RUNNING.value:
        return
    now = utcnow()
    by_id = {s.step_id: s for s in workflow.steps}
    while True:
        result = planner.plan(specs(workflow), states(workflow))
        for step_id in result.skipped:
            step = by_id[step_id]
            step.status = StepStatus.SKIPPED.value
            step.error_message = "not run: a step it depends on did not complete"
            step.completed_at = step.updated_at = now
        for step_id, message in result.errors.items():
            _fail_step(by_id[step_id], message, now)
        for ready in result.ready:
            step = by_id[ready.step_id]
            try:
                _start_step(session, runtime, workflow, step, ready.inputs)
            except (InvalidInputError, ValidationError, ValueError) as exc:
                _fail_step(step, f"could not start: {_message(exc)}", now)
                log.info(
                    "workflow %s: step %r could not start: %s",
                    workflow.id,
                    step.step_id,
                    _message(exc),
                    extra={"workflow_id": str(workflow.id), "tenant": workflow.tenant_id},
                )
        if not (result.skipped or result.errors or result.ready):
            break
    _summarise(session, runtime, workflow, result.status, result.failed_steps, now)


def _start_step(
    session: Session, runtime: Runtime, workflow: Workflow, step: WorkflowStep, inputs: dict[str, Any]
) -> None:
    body = _TASK_CREATE.validate_python(task_body(_step_dict(step), inputs, workflow))
    actor = Principal(subject=f"workflow:{workflow.id}", tenant=workflow.tenant_id, role=Role.SERVICE)
    with session.begin_nested():  # a step whose inputs are refused leaves nothing behind
        task = TaskService(session, runtime, actor).create(body, admit=False)
        task.workflow_id = str(workflow.id)
    now = utcnow()
    step.task_id = task.id
    step.status = StepStatus.RUNNING.value
    step.started_at = step.updated_at = now
    workflow.current_step = step.step_id


def _fail_step(step: WorkflowStep, message: str, now: Any) -> None:
    step.status = StepStatus.FAILED.value
    step.error_message = message
    step.completed_at = step.updated_at = now


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)


def _summarise(
    session: Session, runtime: Runtime, workflow: Workflow, status: WorkflowStatus, failed: list[str], now: Any
) -> None:
    done = sum(1 for s in workflow.steps if s.status in {x.value for x in STEP_TERMINAL})
    workflow.completed_steps = sum(1 for s in workflow.steps if s.status == StepStatus.COMPLETED.value)
    workflow.progress = round(done / workflow.total_steps, 4) if workflow.total_steps else 1.0
    workflow.updated_at = now
    if status in WORKFLOW_TERMINAL:
        workflow.status = status.value
        workflow.completed_at = now
        workflow.current_step = None
        final = next((s for s in workflow.steps if s.step_id == workflow.final_step_id), None)
        if status is WorkflowStatus.COMPLETED and final is not None:
            workflow.final_step_result = final.result
        if failed:
            by_id = {s.step_id: s for s in workflow.steps}
            reasons = [f"step {sid!r} failed: {by_id[sid].error_message or 'no reason given'}" for sid in failed]
            workflow.error_message = reasons[0]
            workflow.errors = [*(workflow.errors or []), *reasons]
        workflow_finished(session, workflow, runtime.settings.webhooks.retry_window_seconds)
        log.info(
            "workflow %s finished: %s",
            workflow.id,
            status.value,
            extra={"workflow_id": str(workflow.id), "tenant": workflow.tenant_id},
        )


def on_task_finished(session: Session, task: Task) -> None:
    """Transition hook: a workflow step's task reached a terminal status; record it and plan what follows."""
    runtime: Runtime | None = session.info.get("runtime")
    if runtime is None:
        return
    workflow_id = session.scalar(select(WorkflowStep.workflow_id).where(WorkflowStep.task_id == task.id))
    if workflow_id is None:
        return
    # Lock the workflow, then read its steps fresh: another step's completion may have committed meanwhile.
    fresh = {"populate_existing": True}
    workflow = session.scalars(
        select(Workflow).where(Workflow.id == workflow_id).with_for_update().execution_options(**fresh)
    ).one()
    step = session.scalars(
        select(WorkflowStep).where(WorkflowStep.task_id == task.id).execution_options(**fresh)
    ).first()
    if step is None or step.status != StepStatus.RUNNING.value:
        # the step was reset (resume) or cancelled meanwhile: this task's outcome no longer counts
        extra = {"task_id": str(task.id), "workflow_id": str(workflow_id), "tenant": task.tenant_id}
        log.debug("workflow %s: outcome of task %s ignored (step no longer runs it)", workflow_id, task.id, extra=extra)
        return
    now = utcnow()
    step.retry_count = task.retry_count
    step.updated_at = step.completed_at = now
    if task.status == TaskStatus.COMPLETED.value:
        step.status = StepStatus.COMPLETED.value
        step.result = outputs(task)
    elif task.status == TaskStatus.CANCELLED.value:
        step.status = StepStatus.CANCELLED.value
        step.error_message = (task.errors or ["cancelled"])[-1]
    else:
        step.status = StepStatus.FAILED.value
        step.error_message = (task.errors or ["failed"])[-1]
    advance(session, runtime, workflow)


def outputs(task: Task) -> dict[str, Any]:
    """A finished task's public fields that are outputs (what later steps can map from)."""
    fields = OUTPUT_FIELDS.get(task.task_type, set())
    data = {k: v for k, v in (task.task_data or {}).items() if k in fields}
    data["task_id"] = str(task.id)
    return data
