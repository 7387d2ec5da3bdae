"""A pure planner for workflow DAGs: what may run next, what can never run, and how the workflow stands.

Nothing here touches a database, a broker or the file system, and nothing is imported from the rest of
``atelier``; the caller loads the definition and the step states, asks :func:`plan`, and persists what it says.

Definitions
-----------
A workflow is a list of :class:`StepSpec`. A step depends on every id in ``depends_on`` and on the
``from_step`` of every one of its :class:`Mapping` entries (a mapping implies a dependency; see :func:`dependencies`).

:func:`validate` rejects a definition that cannot run, raising :class:`PlanError` for the *first* problem. It checks
rule by rule over all steps (every id before any task type, and so on), in this order:

1. the step list is empty → ``loc=("steps",)``;
2. a step id is blank or used twice → ``("steps", i, "id")``;
3. a task type is unknown (not a key of ``input_fields``) → ``("steps", i, "task_type")``;
4. a ``depends_on`` entry names an unknown step or the step itself → ``("steps", i, "depends_on", j)``;
5. for each mapping ``j`` of step ``i`` under ``("steps", i, "input_mappings", j)``: ``from_step`` unknown or the
   step itself → ``"from_step"``; ``to_field`` not an input of the step's task type → ``"to_field"``; the first
   dotted segment of ``from_field`` not an output of the source step's task type (a task type missing from
   ``output_fields`` declares no outputs) → ``"from_field"``; ``transform`` not a key of :data:`TRANSFORMS` →
   ``"transform"``;
6. the dependencies form a cycle → ``("steps",)``, the message naming the path, e.g.
   ``steps form a cycle: a → b → c → a`` (``x → y``: ``y`` depends on ``x``).

Planning
--------
:func:`plan` takes a *validated* definition and the current :class:`StepState` of each step (a step with no entry is
``PENDING``) and walks the steps in :func:`topological_order`:

- **skipped**: a ``PENDING`` step with a dependency ``FAILED``, ``CANCELLED`` or ``SKIPPED`` can never run. Steps
  skipped in this call count as ``SKIPPED`` for the steps below them, so a whole chain under a failure is skipped at
  once.
- **ready**: a ``PENDING`` step whose dependencies are all ``COMPLETED``; its inputs are its ``config`` with the
  mapped values laid over it (:func:`resolve_inputs`).
- **errors**: a step that would be ready but whose mapping fails at run time (a missing source field, a
  :class:`TransformError`) is reported in ``errors`` instead of ``ready``; the caller should fail it. It counts as
  ``FAILED`` for the steps below it, which are skipped in the same call.
- **status**: ``COMPLETED`` when every step is ``COMPLETED`` (or, with nothing failed or cancelled, every step is
  ``COMPLETED`` or ``SKIPPED``); else ``CANCELLED`` when a step is ``CANCELLED`` and nothing is ``RUNNING`` or
  ready; else ``FAILED`` when a step is ``FAILED`` or has a mapping error and nothing is ``RUNNING`` or ready;
  otherwise ``RUNNING``. The planner never answers ``PENDING`` or ``PAUSED``: those are the service's to set.

Mapped values and the definition's ``config`` are deep-copied, so the inputs handed out never alias the
definition or the stored results.
"""

from __future__ import annotations

import copy
import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Mapping as Mapping_
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "TRANSFORMS",
    "Mapping",
    "Plan",
    "PlanError",
    "ReadyStep",
    "StepSpec",
    "StepState",
    "StepStatus",
    "TransformError",
    "WorkflowStatus",
    "dependencies",
    "plan",
    "resolve_inputs",
    "topological_order",
    "validate",
]


class StepStatus(StrEnum):
    """Where one step of a workflow stands."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


class WorkflowStatus(StrEnum):
    """Where a workflow as a whole stands."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class PlanError(ValueError):
    """A workflow definition that cannot run. ``loc`` names where, FastAPI-style, e.g.
    ``("steps", 2, "input_mappings", 0, "to_field")``."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = tuple(loc)

    def __repr__(self) -> str:
        return f"PlanError({self.message!r}, loc={self.loc!r})"


class TransformError(ValueError):
    """A transform that cannot apply to the value it got at run time."""


# --- transforms -------------------------------------------------------------------------------------------------


def _sequence(name: str, value: Any) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise TransformError(f"{name!r} needs a list, got {type(value).__name__} {value!r}")
    if not value:
        raise TransformError(f"{name!r} needs a non-empty list, got an empty one")
    return value


def _first(value: Any) -> Any:
    return _sequence("first", value)[0]


def _last(value: Any) -> Any:
    return _sequence("last", value)[-1]


def _as_list(value: Any) -> Any:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return [value]


def _as_string(value: Any) -> Any:
    return None if value is None else str(value)


def _as_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TransformError(f"'as_int' cannot convert {type(value).__name__} {value!r} to an integer") from exc


def _as_float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TransformError(f"'as_float' cannot convert {type(value).__name__} {value!r} to a number") from exc


def _basename(value: Any) -> Any:
    if not isinstance(value, str):
        raise TransformError(f"'basename' needs a path or URL string, got {type(value).__name__} {value!r}")
    path = value.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if not name:
        raise TransformError(f"'basename' found no path segment in {value!r}")
    return name


TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "first": _first,
    "last": _last,
    "as_list": _as_list,
    "as_string": _as_string,
    "as_int": _as_int,
    "as_float": _as_float,
    "basename": _basename,
}
"""Named transforms a mapping may apply to the value it carries.

- ``first`` / ``last``: the first / last item of a list or tuple; a :class:`TransformError` when the value is empty
  or not a list.
- ``as_list``: a list unchanged, a tuple as a list, anything else wrapped in a one-item list.
- ``as_string``: ``str(value)``; ``None`` stays ``None``.
- ``as_int`` / ``as_float``: ``int(value)`` / ``float(value)``; a value they reject raises :class:`TransformError`.
- ``basename``: the last path segment of a path or URL string, ignoring its query, fragment and trailing slashes.
"""


# --- the definition ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """One field mapping: ``from_step``'s result field ``from_field`` feeds this step's input ``to_field``.

    ``from_field`` is a key of the source step's result, or a dotted path into it with list indexes, e.g.
    ``"result_image_paths.0"``. ``transform``, when set, names an entry of :data:`TRANSFORMS`.
    """

    from_step: str
    from_field: str
    to_field: str
    transform: str | None = None


@dataclass(frozen=True)
class StepSpec:
    """One step of a workflow definition: a task type, its static inputs, and where the rest come from."""

    step_id: str
    task_type: str
    config: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    input_mappings: tuple[Mapping, ...] = ()


@dataclass(frozen=True)
class StepState:
    """The current status of one step and, once it finished, its outputs."""

    status: StepStatus
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReadyStep:
    """A step that may start now, with its resolved inputs (config merged with mapped values, mapped values win)."""

    step_id: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided; every list is in topological order."""

    ready: list[ReadyStep]
    """``PENDING`` steps whose every dependency is ``COMPLETED`` and whose inputs resolved."""
    skipped: list[str]
    """``PENDING`` steps that can never run: a dependency, direct or transitive, failed, was cancelled or skipped."""
    status: WorkflowStatus
    """The workflow's status (see the module docstring)."""
    failed_steps: list[str]
    """Steps whose state is ``FAILED``."""
    errors: dict[str, str]
    """step_id → message, for steps that would be ready but whose mapping failed at run time."""


def dependencies(step: StepSpec) -> set[str]:
    """``depends_on`` ∪ every mapping's ``from_step`` (a mapping implies a dependency)."""
    return set(step.depends_on) | {mapping.from_step for mapping in step.input_mappings}


# --- validation -------------------------------------------------------------------------------------------------

_MAX_LISTED = 8


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "(none)"
    shown = ", ".join(ordered[:_MAX_LISTED])
    return shown if len(ordered) <= _MAX_LISTED else f"{shown}, … ({len(ordered)} in all)"


def validate(
    steps: Sequence[StepSpec],
    input_fields: Mapping_[str, set[str]],
    output_fields: Mapping_[str, set[str]],
) -> None:
    """Raise :class:`PlanError` for the FIRST problem found, checking rule by rule in this order.

    1. an empty step list (``loc=("steps",)``);
    2. a blank or duplicate step id (``("steps", i, "id")``);
    3. an unknown task type, i.e. not a key of ``input_fields`` (``("steps", i, "task_type")``);
    4. a ``depends_on`` entry that is unknown or the step itself (``("steps", i, "depends_on", j)``);
    5. per mapping, under ``("steps", i, "input_mappings", j)``: an unknown or self ``from_step``; a ``to_field``
       the task type does not accept; a ``from_field`` whose first dotted segment the source task type does not
       produce (per ``output_fields``); an unknown ``transform``;
    6. a dependency cycle (``("steps",)``), the message naming its path.

    ``input_fields`` maps each task type to the input fields it accepts, ``output_fields`` each task type to the
    top-level fields of its result.
    """
    if not steps:
        raise PlanError("a workflow needs at least one step", ("steps",))

    first_index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not step.step_id.strip():
            raise PlanError(f"step id {step.step_id!r} is blank", ("steps", i, "id"))
        if step.step_id in first_index:
            raise PlanError(
                f"duplicate step id {step.step_id!r}: steps {first_index[step.step_id]} and {i} both use it",
                ("steps", i, "id"),
            )
        first_index[step.step_id] = i

    for i, step in enumerate(steps):
        if step.task_type not in input_fields:
            raise PlanError(
                f"step {step.step_id!r} has unknown task type {step.task_type!r}; known: {_listing(input_fields)}",
                ("steps", i, "task_type"),
            )

    for i, step in enumerate(steps):
        for j, dep in enumerate(step.depends_on):
            if dep == step.step_id:
                raise PlanError(f"step {step.step_id!r} depends on itself", ("steps", i, "depends_on", j))
            if dep not in first_index:
                raise PlanError(f"step {step.step_id!r} depends on unknown step {dep!r}", ("steps", i, "depends_on", j))

    for i, step in enumerate(steps):
        for j, mapping in enumerate(step.input_mappings):
            _validate_mapping(steps, first_index, input_fields, output_fields, i, j, mapping)

    cycle = _find_cycle(steps)
    if cycle:
        raise PlanError(_cycle_message(cycle), ("steps",))


def _validate_mapping(
    steps: Sequence[StepSpec],
    first_index: Mapping_[str, int],
    input_fields: Mapping_[str, set[str]],
    output_fields: Mapping_[str, set[str]],
    i: int,
    j: int,
    mapping: Mapping,
) -> None:
    step = steps[i]
    loc: tuple[str | int, ...] = ("steps", i, "input_mappings", j)
    where = f"step {step.step_id!r}, input_mappings[{j}]"
    if mapping.from_step == step.step_id:
        raise PlanError(f"{where}: a step cannot map from itself", (*loc, "from_step"))
    if mapping.from_step not in first_index:
        raise PlanError(f"{where}: from_step {mapping.from_step!r} is not a step of this workflow", (*loc, "from_step"))
    accepted = input_fields[step.task_type]
    if mapping.to_field not in accepted:
        raise PlanError(
            f"{where}: task type {step.task_type!r} has no input field {mapping.to_field!r}; "
            f"accepted: {_listing(accepted)}",
            (*loc, "to_field"),
        )
    source = steps[first_index[mapping.from_step]]
    produced = output_fields.get(source.task_type, set())
    head = mapping.from_field.split(".", 1)[0]
    if head not in produced:
        raise PlanError(
            f"{where}: step {source.step_id!r} ({source.task_type}) has no output field {head!r}; "
            f"it produces: {_listing(produced)}",
            (*loc, "from_field"),
        )
    if mapping.transform is not None and mapping.transform not in TRANSFORMS:
        raise PlanError(
            f"{where}: unknown transform {mapping.transform!r}; valid: {_listing(TRANSFORMS)}",
            (*loc, "transform"),
        )


# --- ordering ---------------------------------------------------------------------------------------------------


def _graph(steps: Sequence[StepSpec]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Each step's definition index, and each step's dependants in definition order; PlanError on bad references."""
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.step_id in index:
            raise PlanError(f"duplicate step id {step.step_id!r}", ("steps", i, "id"))
        index[step.step_id] = i
    dependants: dict[str, list[str]] = {step.step_id: [] for step in steps}
    for i, step in enumerate(steps):
        for dep in sorted(dependencies(step), key=lambda d: index.get(d, -1)):
            if dep not in index:
                raise PlanError(f"step {step.step_id!r} depends on unknown step {dep!r}", ("steps", i))
            dependants[dep].append(step.step_id)
    return index, dependants


def _find_cycle(steps: Sequence[StepSpec]) -> list[str]:
    """A dependency cycle as a path ``[a, b, …, a]`` (each next step depends on the one before), or ``[]``."""
    _, dependants = _graph(steps)
    done: set[str] = set()
    for start in dependants:
        if start in done:
            continue
        path: list[str] = [start]
        on_path: set[str] = {start}
        frontier: list[Iterator[str]] = [iter(dependants[start])]
        while frontier:
            nxt = next(frontier[-1], None)
            if nxt is None:
                frontier.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                frontier.append(iter(dependants[nxt]))
    return []


def _cycle_message(cycle: Sequence[str]) -> str:
    return "steps form a cycle: " + " → ".join(cycle)


def topological_order(steps: Sequence[StepSpec]) -> list[str]:
    """Kahn's algorithm; ties broken by the steps' order in the definition (stable, deterministic).

    Raises :class:`PlanError` for a cycle (naming its path, as :func:`validate` does), a duplicate id, or a
    dependency on a step that is not in ``steps``.
    """
    index, dependants = _graph(steps)
    waiting = {step.step_id: len(dependencies(step)) for step in steps}
    heap = [(index[sid], sid) for sid, count in waiting.items() if count == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, sid = heapq.heappop(heap)
        order.append(sid)
        for dependant in dependants[sid]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(heap, (index[dependant], dependant))
    if len(order) < len(steps):
        raise PlanError(_cycle_message(_find_cycle(steps)), ("steps",))
    return order


# --- run time ---------------------------------------------------------------------------------------------------

_INDEX = re.compile(r"-?\d+")
_MISSING = object()


def _lookup(result: Any, path: str) -> tuple[Any, str]:
    """Follow a dotted path with list indexes; ``(value, "")`` or ``(_MISSING, why)``."""
    value = result
    walked: list[str] = []
    for segment in path.split("."):
        here = ".".join(walked) or "the result"
        if isinstance(value, Mapping_):
            if segment not in value:
                return _MISSING, f"{here} has no key {segment!r}"
            value = value[segment]
        elif isinstance(value, list | tuple):
            if not _INDEX.fullmatch(segment):
                return _MISSING, f"{here} is a list and {segment!r} is not an index"
            position = int(segment)
            if not -len(value) <= position < len(value):
                return _MISSING, f"{here} has {len(value)} item(s), no index {position}"
            value = value[position]
        else:
            return _MISSING, f"{here} is {type(value).__name__}, not an object or list, so it has no {segment!r}"
        walked.append(segment)
    return value, ""


def resolve_inputs(step: StepSpec, states: Mapping_[str, StepState]) -> dict[str, Any]:
    """config + mapped values; raises TransformError / PlanError(…) when a source field is missing.

    Each mapping reads ``from_field`` (a dotted path, list indexes allowed) from the result of ``from_step``, applies
    its transform, and sets ``to_field``; mapped values win over ``config``. A source step that is not
    ``COMPLETED``, a missing field or an unknown transform raises :class:`PlanError` with
    ``loc=("input_mappings", j, <field>)``; a transform that rejects the value raises :class:`TransformError`. Both
    messages name the step, the mapping and the field.
    """
    inputs = copy.deepcopy(step.config)
    for j, mapping in enumerate(step.input_mappings):
        route = f"{mapping.from_step}.{mapping.from_field} → {mapping.to_field}"
        where = f"step {step.step_id!r}, input_mappings[{j}] ({route})"
        source = states.get(mapping.from_step)
        if source is None or source.status != StepStatus.COMPLETED:
            status = StepStatus.PENDING if source is None else source.status
            raise PlanError(
                f"{where}: step {mapping.from_step!r} is {status}, not COMPLETED", ("input_mappings", j, "from_step")
            )
        value, why = _lookup(source.result or {}, mapping.from_field)
        if value is _MISSING:
            raise PlanError(
                f"{where}: the result of step {mapping.from_step!r} has no field {mapping.from_field!r} ({why})",
                ("input_mappings", j, "from_field"),
            )
        if mapping.transform is not None:
            transform = TRANSFORMS.get(mapping.transform)
            if transform is None:
                raise PlanError(
                    f"{where}: unknown transform {mapping.transform!r}; valid: {_listing(TRANSFORMS)}",
                    ("input_mappings", j, "transform"),
                )
            try:
                value = transform(value)
            except TransformError as exc:
                raise TransformError(f"{where}: {exc}") from exc
        inputs[mapping.to_field] = copy.deepcopy(value)
    return inputs


_BLOCKING = frozenset({StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED})


def plan(steps: Sequence[StepSpec], states: Mapping_[str, StepState]) -> Plan:
    """Decide what runs next: ready steps with their inputs, steps to skip, mapping errors, and the workflow status.

    ``steps`` must be a validated definition (see :func:`validate`); a step with no entry in ``states`` is
    ``PENDING``. The rules are in the module docstring. Pure: neither argument is modified.
    """
    order = topological_order(steps)
    by_id = {step.step_id: step for step in steps}
    given = {sid: (states[sid].status if sid in states else StepStatus.PENDING) for sid in order}
    effective = dict(given)  # as it will stand once the caller applies this plan
    ready: list[ReadyStep] = []
    skipped: list[str] = []
    errors: dict[str, str] = {}
    for sid in order:
        if given[sid] != StepStatus.PENDING:
            continue
        deps = dependencies(by_id[sid])
        if any(effective[dep] in _BLOCKING for dep in deps):
            effective[sid] = StepStatus.SKIPPED
            skipped.append(sid)
        elif all(effective[dep] == StepStatus.COMPLETED for dep in deps):
            try:
                ready.append(ReadyStep(sid, resolve_inputs(by_id[sid], states)))
            except (PlanError, TransformError) as exc:
                errors[sid] = str(exc)
                effective[sid] = StepStatus.FAILED

    failed_steps = [sid for sid in order if given[sid] == StepStatus.FAILED]
    statuses = set(effective.values())
    active = bool(ready) or StepStatus.RUNNING in statuses
    if statuses <= {StepStatus.COMPLETED} or (not active and statuses <= {StepStatus.COMPLETED, StepStatus.SKIPPED}):
        workflow = WorkflowStatus.COMPLETED
    elif not active and StepStatus.CANCELLED in statuses:
        workflow = WorkflowStatus.CANCELLED
    elif not active and StepStatus.FAILED in statuses:
        workflow = WorkflowStatus.FAILED
    else:
        workflow = WorkflowStatus.RUNNING
    return Plan(ready=ready, skipped=skipped, status=workflow, failed_steps=failed_steps, errors=errors)
