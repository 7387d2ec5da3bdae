"""The evaluation operations of the app's OpenAPI against the reference spec (the shared conformance tool)."""

from __future__ import annotations

import io
import json
import os
import runpy
from pathlib import Path
from typing import Any

import pytest

from atelier.app import create_app
from atelier.evaluation.schemas import EvaluationProvider
from atelier.settings import EvaluationSettings

SHARED = Path(__file__).resolve().parents[3] / "shared"
TOOL = SHARED / "tools" / "spec_conformance.py"
SPEC = SHARED / "spec" / "compute-api.openapi.json"
PREFIX = "/api/v1/evaluation"

needs_spec = pytest.mark.skipif(
    not TOOL.exists() and os.environ.get("CI") != "true",
    reason="../shared/ with the reference spec is not beside the checkout",
)


@needs_spec
def test_evaluation_operations_conform(tmp_path: Path) -> None:
    spec: dict[str, Any] = json.loads(SPEC.read_text(encoding="utf-8"))
    spec["paths"] = {path: item for path, item in spec["paths"].items() if path.startswith(PREFIX)}
    assert len(spec["paths"]) == 2
    only_evaluation = tmp_path / "spec.json"
    only_evaluation.write_text(json.dumps(spec))
    app_doc = tmp_path / "app.json"
    app_doc.write_text(json.dumps(create_app().openapi()))
    tool: dict[str, Any] = runpy.run_path(str(TOOL))
    out = io.StringIO()
    tool["run"](str(only_evaluation), str(app_doc), False, True, False, out=out)
    report = out.getvalue()
    assert "conformance: 2/2 operations present, 0 missing fields, 0 missing enum values" in report, report
    assert "parameters: 0 missing" in report, report


def test_default_provider_setting_names_a_backend() -> None:
    annotation = EvaluationSettings.model_fields["default_provider"].annotation
    assert set(annotation.__args__) == {p.value for p in EvaluationProvider}  # type: ignore[union-attr]
