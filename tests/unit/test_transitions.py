"""The state machine: its edges, and that it is the only writer of task status."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TypeGuard

import pytest
from sqlalchemy.orm import Session

from atelier.tasks.enums import TaskStatus
from atelier.tasks.models import Task
from atelier.tasks.transitions import ALLOWED, IllegalTransitionError, can_transition, transition

PACKAGE = Path(__file__).resolve().parents[2] / "atelier"
TRANSITIONS = PACKAGE / "tasks" / "transitions.py"
TRAINING = PACKAGE / "training" / "service.py"  # the door for training statuses (their own state machine)


def _is_setattr_status(node: ast.AST) -> TypeGuard[ast.Call]:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "setattr"
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "status"
    )


def _status_writes(path: Path) -> list[int]:
    """Lines that assign ``<x>.status = …`` or pass ``status=`` to ``.values(…)``/``update(…)``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [t.lineno for t in targets if isinstance(t, ast.Attribute) and t.attr == "status"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            lines += [k.lineno for k in node.keywords if k.arg == "status"]
        if _is_setattr_status(node):
            lines.append(node.lineno)
    return lines


# Task statuses are written by the transitions module only; workflow and step statuses by the workflow service
# only (it changes task statuses through ``transition``/``TaskService`` like everyone else).
WORKFLOWS = PACKAGE / "workflows" / "service.py"


def test_only_the_transitions_module_writes_status() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if path not in (TRANSITIONS, WORKFLOWS, TRAINING) and (lines := _status_writes(path))
    }
    assert offenders == {}
    # In the training service only its ``transition`` function writes a status.
    tree = ast.parse(TRAINING.read_text())
    door = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "transition")
    inside = set(range(door.lineno, (door.end_lineno or door.lineno) + 1))
    assert _status_writes(TRAINING) and set(_status_writes(TRAINING)) <= inside
    assert _status_writes(TRANSITIONS), "the scan must see the writes the transitions module does make"
    assert not re.search(r"task\.status\s*=[^=]", WORKFLOWS.read_text()), "it must not write task statuses"


def test_scan_catches_a_write(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("task.status = 'FAILED'\nstmt.values(status='X')\nsetattr(task, 'status', 'Y')\n")
    assert _status_writes(sample) == [1, 2, 3]


@pytest.mark.parametrize(
    ("current", "target", "legal"),
    [
        ("PENDING", TaskStatus.EXECUTING, True),
        ("PENDING", TaskStatus.CANCELLED, True),
        ("PENDING", TaskStatus.COMPLETED, False),
        ("EXECUTING", TaskStatus.COMPLETED, True),
        ("EXECUTING", TaskStatus.PENDING, True),
        ("COMPLETED", TaskStatus.PENDING, False),
        ("COMPLETED", TaskStatus.FAILED, False),
        ("FAILED", TaskStatus.PENDING, True),
        ("CANCELLED", TaskStatus.EXECUTING, False),
    ],
)
def test_edges(current: str, target: TaskStatus, legal: bool) -> None:
    assert can_transition(current, target) is legal


def test_every_status_has_an_entry() -> None:
    assert set(ALLOWED) == set(TaskStatus)


class _FakeSession:
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.info: dict[str, object] = {}  # no runtime: no retention

    def execute(self, _statement: object, params: dict[str, object]) -> None:
        self.events.append(params)


def _task(status: str) -> Task:
    return Task(status=status, tenant_id="t", task_type="GENERATION", errors=[], progress=0.0, retry_count=0)


def test_transition_stamps_and_records() -> None:
    session = _FakeSession()
    task = _task("EXECUTING")
    transition(session, task, TaskStatus.FAILED, message="boom")  # type: ignore[arg-type]
    assert task.status == "FAILED"
    assert task.completed_at is not None
    assert task.errors == ["boom"]
    assert task.error_category == "INTERNAL_ERROR"
    assert [(e["event_type"], e["status"], e["message"]) for e in session.events] == [("TASK_STATUS", "FAILED", "boom")]


def test_illegal_transition_raises_conflict() -> None:
    task = _task("COMPLETED")
    with pytest.raises(IllegalTransitionError) as info:
        transition(Session(), task, TaskStatus.EXECUTING)
    assert info.value.http_status == 409
    assert task.status == "COMPLETED"
