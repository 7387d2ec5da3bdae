"""Wiring of the workflow engine into the task state machine."""

from __future__ import annotations

from atelier.tasks import transitions
from atelier.workflows.service import on_task_finished


def install_workflow_hooks() -> None:
    """Make terminal task transitions advance their workflow (idempotent)."""
    if on_task_finished not in transitions.TERMINAL_HOOKS:
        transitions.TERMINAL_HOOKS.append(on_task_finished)
