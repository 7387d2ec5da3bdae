"""The workflow planner: validation, ordering, readiness, skipping, input mapping and the workflow status."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from atelier.workflows import planner
from atelier.workflows.planner import (
    TRANSFORMS,
    Mapping,
    Plan,
    PlanError,
    ReadyStep,
    StepSpec,
    StepState,
    StepStatus,
    TransformError,
    WorkflowStatus,
    dependencies,
    plan,
    resolve_inputs,
    topological_order,
    validate,
)

INPUT_FIELDS: dict[str, set[str]] = {
    "GENERATION": {"prompt", "width", "height", "seed"},
    "REFINE": {"base_image_url", "upscale_factor"},
    "IMAGE_ADJUSTER": {"input_image", "aspect_ratio", "mode"},
}
OUTPUT_FIELDS: dict[str, set[str]] = {
    "GENERATION": {"result_image_path", "seed"},
    "REFINE": {"result_image_path"},
    "IMAGE_ADJUSTER": {"result_image_path"},
    "BACKGROUND_REMOVAL": {"result_image_paths"},
}

PENDING, RUNNING, COMPLETED = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.COMPLETED
FAILED, SKIPPED, CANCELLED = StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED


def gen(step_id: str, prompt: str = "a red fox", **kwargs: Any) -> StepSpec:
    return StepSpec(step_id, "GENERATION", {"prompt": prompt, "width": 512, "height": 512}, **kwargs)


def refine(step_id: str, source: str, transform: str | None = None, **kwargs: Any) -> StepSpec:
    mapping = Mapping(source, "result_image_path", "base_image_url", transform)
    return StepSpec(step_id, "REFINE", {"upscale_factor": 2}, input_mappings=(mapping,), **kwargs)


def done(path: str, **extra: Any) -> StepState:
    return StepState(COMPLETED, {"result_image_path": path, **extra})


def ready_ids(result: Plan) -> list[str]:
    return [step.step_id for step in result.ready]


def loc_of(steps: list[StepSpec]) -> tuple[str | int, ...]:
    with pytest.raises(PlanError) as caught:
        validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    return caught.value.loc


# --- single step and chain --------------------------------------------------------------------------------------


def test_single_step_is_ready_with_its_config_then_completes() -> None:
    steps = [gen("a")]
    validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)

    first = plan(steps, {})
    assert first == Plan(
        ready=[ReadyStep("a", {"prompt": "a red fox", "width": 512, "height": 512})],
        skipped=[],
        status=WorkflowStatus.RUNNING,
        failed_steps=[],
        errors={},
    )

    running = plan(steps, {"a": StepState(RUNNING)})
    assert running.ready == []
    assert running.status == WorkflowStatus.RUNNING

    finished = plan(steps, {"a": done("/out/a.png")})
    assert finished.ready == []
    assert finished.status == WorkflowStatus.COMPLETED


def test_single_step_failure_fails_the_workflow() -> None:
    result = plan([gen("a")], {"a": StepState(FAILED)})
    assert result.status == WorkflowStatus.FAILED
    assert result.failed_steps == ["a"]
    assert result.ready == []


def test_chain_runs_one_step_at_a_time() -> None:
    steps = [
        gen("a"),
        refine("b", "a"),
        StepSpec(
            "c",
            "IMAGE_ADJUSTER",
            {"aspect_ratio": "16:9", "mode": "crop"},
            input_mappings=(Mapping("b", "result_image_path", "input_image"),),
        ),
    ]
    validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    assert topological_order(steps) == ["a", "b", "c"]

    states: dict[str, StepState] = {}
    assert ready_ids(plan(steps, states)) == ["a"]

    states["a"] = done("/out/a.png")
    step_b = plan(steps, states)
    assert step_b.ready == [ReadyStep("b", {"upscale_factor": 2, "base_image_url": "/out/a.png"})]

    states["b"] = done("/out/b.png")
    step_c = plan(steps, states)
    assert step_c.ready == [
        ReadyStep("c", {"aspect_ratio": "16:9", "mode": "crop", "input_image": "/out/b.png"}),
    ]
    assert step_c.status == WorkflowStatus.RUNNING

    states["c"] = done("/out/c.png")
    assert plan(steps, states).status == WorkflowStatus.COMPLETED


# --- diamond and fan-out/fan-in ---------------------------------------------------------------------------------


def diamond() -> list[StepSpec]:
    return [
        StepSpec("a", "GENERATION", {"prompt": "a lighthouse", "width": 1024, "height": 768}),
        StepSpec(
            "b",
            "REFINE",
            {"upscale_factor": 4},
            input_mappings=(Mapping("a", "result_image_path", "base_image_url", "basename"),),
        ),
        StepSpec(
            "c",
            "GENERATION",
            {"prompt": "the same lighthouse at night", "width": 1024, "height": 768},
            input_mappings=(Mapping("a", "seed", "seed", "as_int"),),
        ),
        StepSpec(
            "d",
            "IMAGE_ADJUSTER",
            {"mode": "fit", "aspect_ratio": "1:1", "input_image": "placeholder"},
            depends_on=("c",),
            input_mappings=(Mapping("b", "result_image_path", "input_image"),),
        ),
    ]


def test_diamond_step_by_step() -> None:
    steps = diamond()
    validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    assert topological_order(steps) == ["a", "b", "c", "d"]

    states: dict[str, StepState] = {}
    start = plan(steps, states)
    assert ready_ids(start) == ["a"]
    assert start.status == WorkflowStatus.RUNNING

    states["a"] = StepState(RUNNING)
    assert ready_ids(plan(steps, states)) == []

    states["a"] = done("s3://bucket/runs/42/a.png?X-Amz-Signature=abc", seed="1234")
    fan_out = plan(steps, states)
    assert fan_out.ready == [
        ReadyStep("b", {"upscale_factor": 4, "base_image_url": "a.png"}),
        ReadyStep("c", {"prompt": "the same lighthouse at night", "width": 1024, "height": 768, "seed": 1234}),
    ]
    assert fan_out.errors == {}

    # d waits for both branches: b done, c still running
    states["b"] = done("/out/b.png")
    states["c"] = StepState(RUNNING)
    waiting = plan(steps, states)
    assert ready_ids(waiting) == []
    assert waiting.status == WorkflowStatus.RUNNING

    # ... and c done, b not yet started: still waiting
    waiting_other = plan(steps, {"a": states["a"], "b": StepState(PENDING), "c": done("/out/c.png")})
    assert ready_ids(waiting_other) == ["b"]

    states["c"] = done("/out/c.png")
    fan_in = plan(steps, states)
    # the mapped value wins over the config's placeholder
    assert fan_in.ready == [ReadyStep("d", {"mode": "fit", "aspect_ratio": "1:1", "input_image": "/out/b.png"})]

    states["d"] = done("/out/d.png")
    assert plan(steps, states).status == WorkflowStatus.COMPLETED


def test_fan_out_fan_in_with_five_branches() -> None:
    branches = [f"branch{n}" for n in range(5)]
    steps = [
        gen("seed"),
        *(refine(name, "seed") for name in branches),
        StepSpec("collect", "IMAGE_ADJUSTER", {"mode": "grid", "input_image": "x"}, depends_on=tuple(branches)),
    ]
    validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)

    states: dict[str, StepState] = {"seed": done("/out/seed.png")}
    fan_out = plan(steps, states)
    assert ready_ids(fan_out) == branches
    assert all(step.inputs["base_image_url"] == "/out/seed.png" for step in fan_out.ready)

    for finished, name in enumerate(branches[:-1], start=1):
        states[name] = done(f"/out/{name}.png")
        partial = plan(steps, states)
        assert ready_ids(partial) == branches[finished:], finished
        assert "collect" not in ready_ids(partial)

    states[branches[-1]] = done("/out/last.png")
    assert ready_ids(plan(steps, states)) == ["collect"]
    states["collect"] = done("/out/grid.png")
    assert plan(steps, states).status == WorkflowStatus.COMPLETED


# --- failures, cancellation, skipping ---------------------------------------------------------------------------


def test_failed_branch_skips_its_dependants_transitively_and_the_other_branch_runs() -> None:
    steps = [
        gen("a"),
        refine("b", "a"),  # fails
        refine("b2", "b"),
        refine("b3", "b2"),
        refine("c", "a"),  # the independent branch
        StepSpec("d", "IMAGE_ADJUSTER", {"mode": "fit"}, depends_on=("b3", "c")),
    ]
    validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    states: dict[str, StepState] = {"a": done("/out/a.png"), "b": StepState(FAILED), "c": StepState(PENDING)}

    result = plan(steps, states)
    assert result.skipped == ["b2", "b3", "d"]  # the whole chain below the failure, in one call
    assert ready_ids(result) == ["c"]
    assert result.status == WorkflowStatus.RUNNING
    assert result.failed_steps == ["b"]

    states.update({sid: StepState(SKIPPED) for sid in result.skipped})
    states["c"] = StepState(RUNNING)
    still = plan(steps, states)
    assert still.status == WorkflowStatus.RUNNING
    assert still.skipped == []

    states["c"] = done("/out/c.png")
    final = plan(steps, states)
    assert final.status == WorkflowStatus.FAILED
    assert final.failed_steps == ["b"]
    assert final.ready == []


def test_failure_with_skips_in_the_same_call_is_final() -> None:
    steps = [gen("a"), refine("b", "a"), refine("c", "b")]
    result = plan(steps, {"a": StepState(FAILED)})
    assert result.skipped == ["b", "c"]
    assert result.status == WorkflowStatus.FAILED  # newly skipped steps count as SKIPPED, nothing left to run


def test_failed_steps_are_in_topological_order() -> None:
    steps = [refine("late", "early"), gen("other"), gen("early")]
    assert topological_order(steps) == ["other", "early", "late"]
    result = plan(steps, {"late": StepState(FAILED), "other": StepState(FAILED), "early": done("/e.png")})
    assert result.failed_steps == ["other", "late"]
    assert result.status == WorkflowStatus.FAILED


def test_cancelled_step_skips_dependants_and_cancels_the_workflow() -> None:
    steps = [gen("a"), refine("b", "a"), gen("c")]
    states = {"a": StepState(CANCELLED), "c": StepState(RUNNING)}

    while_running = plan(steps, states)
    assert while_running.skipped == ["b"]
    assert while_running.status == WorkflowStatus.RUNNING

    final = plan(steps, {"a": StepState(CANCELLED), "b": StepState(SKIPPED), "c": done("/c.png")})
    assert final.status == WorkflowStatus.CANCELLED
    assert final.failed_steps == []


def test_cancelled_wins_over_failed_once_nothing_runs() -> None:
    steps = [gen("a"), gen("b")]
    assert plan(steps, {"a": StepState(CANCELLED), "b": StepState(FAILED)}).status == WorkflowStatus.CANCELLED


def test_pending_step_keeps_a_failed_workflow_running() -> None:
    steps = [gen("a"), gen("b")]
    result = plan(steps, {"a": StepState(FAILED)})
    assert ready_ids(result) == ["b"]
    assert result.status == WorkflowStatus.RUNNING


def test_all_completed_or_skipped_without_failure_is_completed() -> None:
    steps = [gen("a"), refine("b", "a")]
    assert plan(steps, {"a": StepState(SKIPPED)}).status == WorkflowStatus.COMPLETED


# --- run-time mapping errors ------------------------------------------------------------------------------------


def test_mapping_a_missing_field_reports_an_error_not_a_ready_step() -> None:
    steps = [gen("a"), refine("b", "a"), refine("c", "b"), gen("other")]
    result = plan(steps, {"a": StepState(COMPLETED, {"seed": 7}), "other": StepState(RUNNING)})
    assert ready_ids(result) == []
    assert list(result.errors) == ["b"]
    message = result.errors["b"]
    assert "'b'" in message
    assert "'a'" in message
    assert "'result_image_path'" in message
    assert result.skipped == ["c"]  # an errored step counts as failed for those below it
    assert result.status == WorkflowStatus.RUNNING  # "other" still runs

    final = plan(steps, {"a": StepState(COMPLETED, {"seed": 7}), "other": done("/o.png")})
    assert final.errors.keys() == {"b"}
    assert final.status == WorkflowStatus.FAILED
    assert final.failed_steps == []  # nothing is in FAILED yet; the caller fails "b"


def test_transform_error_at_run_time_goes_to_errors() -> None:
    steps = [
        StepSpec("a", "GENERATION", {"prompt": "p"}),
        StepSpec("b", "GENERATION", {"prompt": "q"}, input_mappings=(Mapping("a", "seed", "seed", "as_int"),)),
    ]
    result = plan(steps, {"a": StepState(COMPLETED, {"seed": "not-a-number"})})
    assert result.ready == []
    assert "as_int" in result.errors["b"]
    assert "'not-a-number'" in result.errors["b"]
    assert result.status == WorkflowStatus.FAILED


def test_resolve_inputs_errors_name_the_step_mapping_and_field() -> None:
    step = refine("b", "a")
    with pytest.raises(PlanError) as missing:
        resolve_inputs(step, {"a": StepState(COMPLETED, None)})
    assert missing.value.loc == ("input_mappings", 0, "from_field")
    assert "step 'b', input_mappings[0]" in str(missing.value)

    with pytest.raises(PlanError) as not_done:
        resolve_inputs(step, {"a": StepState(RUNNING)})
    assert not_done.value.loc == ("input_mappings", 0, "from_step")
    assert "RUNNING" in str(not_done.value)

    with pytest.raises(PlanError, match="PENDING"):
        resolve_inputs(step, {})

    with pytest.raises(TransformError, match=r"step 'b', input_mappings\[0\].*'first' needs a list"):
        resolve_inputs(refine("b", "a", "first"), {"a": done("/a.png")})


def test_resolve_inputs_does_not_alias_config_or_results() -> None:
    step = StepSpec(
        "b",
        "IMAGE_ADJUSTER",
        {"mode": {"kind": "fit"}},
        input_mappings=(Mapping("a", "result_image_paths", "input_image"),),
    )
    source = StepState(COMPLETED, {"result_image_paths": ["/x.png"]})
    inputs = resolve_inputs(step, {"a": source})
    inputs["mode"]["kind"] = "changed"
    inputs["input_image"].append("/y.png")
    assert step.config == {"mode": {"kind": "fit"}}
    assert source.result == {"result_image_paths": ["/x.png"]}


# --- dotted paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("result_image_paths.0", "/out/fg.png"),
        ("result_image_paths.1", "/out/mask.png"),
        ("result_image_paths.-1", "/out/mask.png"),
        ("meta.sizes.1.width", 64),
        ("meta.sizes", [{"width": 32}, {"width": 64}]),
    ],
)
def test_dotted_paths_with_list_indexes(path: str, expected: Any) -> None:
    result = {
        "result_image_paths": ["/out/fg.png", "/out/mask.png"],
        "meta": {"sizes": [{"width": 32}, {"width": 64}]},
    }
    step = StepSpec("b", "IMAGE_ADJUSTER", {}, input_mappings=(Mapping("a", path, "input_image"),))
    assert resolve_inputs(step, {"a": StepState(COMPLETED, result)}) == {"input_image": expected}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("result_image_paths.2", "has 2 item(s), no index 2"),
        ("result_image_paths.first", "is a list and 'first' is not an index"),
        ("meta.missing", "meta has no key 'missing'"),
        ("meta.count.x", "meta.count is int"),
    ],
)
def test_dotted_path_misses_explain_why(path: str, why: str) -> None:
    result = {"result_image_paths": ["/a.png", "/b.png"], "meta": {"count": 2}}
    step = StepSpec("b", "IMAGE_ADJUSTER", {}, input_mappings=(Mapping("a", path, "input_image"),))
    with pytest.raises(PlanError) as caught:
        resolve_inputs(step, {"a": StepState(COMPLETED, result)})
    assert why in str(caught.value)
    assert repr(path) in str(caught.value)


def test_background_removal_output_feeds_an_adjuster_through_first() -> None:
    steps = [
        StepSpec("cut", "BACKGROUND_REMOVAL", {}),
        StepSpec(
            "fit",
            "IMAGE_ADJUSTER",
            {"mode": "fit"},
            input_mappings=(Mapping("cut", "result_image_paths", "input_image", "first"),),
        ),
    ]
    result = plan(steps, {"cut": StepState(COMPLETED, {"result_image_paths": ["/fg.png", "/mask.png"]})})
    assert result.ready == [ReadyStep("fit", {"mode": "fit", "input_image": "/fg.png"})]


# --- transforms -------------------------------------------------------------------------------------------------


def test_transform_names_are_exactly_these() -> None:
    assert set(TRANSFORMS) == {"first", "last", "as_list", "as_string", "as_int", "as_float", "basename"}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("first", ["a", "b", "c"], "a"),
        ("first", ("x",), "x"),
        ("last", ["a", "b", "c"], "c"),
        ("last", ("x", "y"), "y"),
        ("as_list", "a", ["a"]),
        ("as_list", ["a", "b"], ["a", "b"]),
        ("as_list", ("a", "b"), ["a", "b"]),
        ("as_list", {"k": 1}, [{"k": 1}]),
        ("as_list", None, [None]),
        ("as_string", 42, "42"),
        ("as_string", 1.5, "1.5"),
        ("as_string", "s", "s"),
        ("as_string", None, None),
        ("as_int", "42", 42),
        ("as_int", " -7 ", -7),
        ("as_int", 3.9, 3),
        ("as_int", True, 1),
        ("as_float", "2.5", 2.5),
        ("as_float", 3, 3.0),
        ("basename", "/data/out/task-1/result.png", "result.png"),
        ("basename", "https://cdn.example.com/a/b/c.webp?sig=abc&exp=1", "c.webp"),
        ("basename", "s3://bucket/key/img.png#frag", "img.png"),
        ("basename", "relative/dir/", "dir"),
        ("basename", "plain.png", "plain.png"),
    ],
)
def test_transform_values(name: str, value: Any, expected: Any) -> None:
    out = TRANSFORMS[name](value)
    assert out == expected
    assert type(out) is type(expected)


def test_as_list_returns_the_same_list() -> None:
    items = ["a"]
    assert TRANSFORMS["as_list"](items) is items


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("first", [], "non-empty"),
        ("first", "abc", "needs a list"),
        ("first", None, "needs a list"),
        ("last", (), "non-empty"),
        ("last", {"a": 1}, "needs a list"),
        ("as_int", "4.5", "as_int"),
        ("as_int", "seven", "as_int"),
        ("as_int", None, "as_int"),
        ("as_int", float("inf"), "as_int"),
        ("as_int", [1], "as_int"),
        ("as_float", "fast", "as_float"),
        ("as_float", None, "as_float"),
        ("as_float", {"v": 1}, "as_float"),
        ("basename", 42, "basename"),
        ("basename", None, "basename"),
        ("basename", "/", "no path segment"),
        ("basename", "?only=query", "no path segment"),
    ],
)
def test_transform_errors(name: str, value: Any, message: str) -> None:
    with pytest.raises(TransformError, match=message):
        TRANSFORMS[name](value)


def test_transform_error_is_a_value_error_and_plan_error_too() -> None:
    assert issubclass(TransformError, ValueError)
    assert issubclass(PlanError, ValueError)
    error = PlanError("bad", ("steps", 1))
    assert str(error) == "bad"
    assert error.loc == ("steps", 1)
    assert PlanError("x").loc == ()


# --- validate ---------------------------------------------------------------------------------------------------


def test_valid_definitions_pass() -> None:
    validate(diamond(), INPUT_FIELDS, OUTPUT_FIELDS)
    validate([gen("only")], INPUT_FIELDS, OUTPUT_FIELDS)


def test_validate_empty() -> None:
    with pytest.raises(PlanError) as caught:
        validate([], INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps",)
    assert str(caught.value) == "a workflow needs at least one step"


@pytest.mark.parametrize("blank", ["", "   "])
def test_validate_blank_id(blank: str) -> None:
    with pytest.raises(PlanError) as caught:
        validate([gen("a"), gen(blank)], INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 1, "id")
    assert repr(blank) in str(caught.value)


def test_validate_duplicate_id() -> None:
    with pytest.raises(PlanError) as caught:
        validate([gen("a"), gen("b"), gen("a")], INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 2, "id")
    assert "'a'" in str(caught.value)


def test_validate_unknown_task_type() -> None:
    with pytest.raises(PlanError) as caught:
        validate([gen("a"), StepSpec("b", "TELEPORT", {})], INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 1, "task_type")
    assert "'b'" in str(caught.value)
    assert "'TELEPORT'" in str(caught.value)
    assert "GENERATION" in str(caught.value)


def test_validate_depends_on_unknown_and_self() -> None:
    assert loc_of([gen("a"), gen("b", depends_on=("a", "ghost"))]) == ("steps", 1, "depends_on", 1)
    with pytest.raises(PlanError, match="'b' depends on unknown step 'ghost'"):
        validate([gen("a"), gen("b", depends_on=("a", "ghost"))], INPUT_FIELDS, OUTPUT_FIELDS)

    assert loc_of([gen("a", depends_on=("a",))]) == ("steps", 0, "depends_on", 0)
    with pytest.raises(PlanError, match="'a' depends on itself"):
        validate([gen("a", depends_on=("a",))], INPUT_FIELDS, OUTPUT_FIELDS)


def test_validate_mapping_from_step() -> None:
    unknown = [gen("a"), refine("b", "ghost")]
    assert loc_of(unknown) == ("steps", 1, "input_mappings", 0, "from_step")
    with pytest.raises(PlanError, match="'ghost'"):
        validate(unknown, INPUT_FIELDS, OUTPUT_FIELDS)

    own = [gen("a"), StepSpec("b", "REFINE", {}, input_mappings=(Mapping("b", "result_image_path", "base_image_url"),))]
    assert loc_of(own) == ("steps", 1, "input_mappings", 0, "from_step")


def test_validate_mapping_to_field_lists_accepted_fields() -> None:
    steps = [
        gen("a"),
        StepSpec(
            "b",
            "REFINE",
            {},
            input_mappings=(
                Mapping("a", "result_image_path", "base_image_url"),
                Mapping("a", "seed", "prompt"),
            ),
        ),
    ]
    with pytest.raises(PlanError) as caught:
        validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 1, "input_mappings", 1, "to_field")
    message = str(caught.value)
    assert "'b'" in message
    assert "'prompt'" in message
    assert "base_image_url, upscale_factor" in message


def test_validate_mapping_to_field_listing_is_capped() -> None:
    many = {"GENERATION": {f"field{n:02}" for n in range(20)}}
    with pytest.raises(PlanError) as caught:
        validate(
            [gen("a"), StepSpec("b", "GENERATION", {}, input_mappings=(Mapping("a", "seed", "nope"),))],
            many,
            OUTPUT_FIELDS,
        )
    assert "field00, field01" in str(caught.value)
    assert "field19" not in str(caught.value)
    assert "20 in all" in str(caught.value)


def test_validate_mapping_from_field_checks_the_first_dotted_segment() -> None:
    ok = [
        StepSpec("cut", "BACKGROUND_REMOVAL", {}),
        StepSpec("fit", "IMAGE_ADJUSTER", {}, input_mappings=(Mapping("cut", "result_image_paths.0", "input_image"),)),
    ]
    with pytest.raises(PlanError) as caught:  # BACKGROUND_REMOVAL has outputs but accepts no inputs here
        validate(ok, INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 0, "task_type")
    validate(ok, {**INPUT_FIELDS, "BACKGROUND_REMOVAL": {"image"}}, OUTPUT_FIELDS)

    bad = [
        gen("a"),
        StepSpec("b", "REFINE", {}, input_mappings=(Mapping("a", "result_image_paths.0", "base_image_url"),)),
    ]
    with pytest.raises(PlanError) as missing:
        validate(bad, INPUT_FIELDS, OUTPUT_FIELDS)
    assert missing.value.loc == ("steps", 1, "input_mappings", 0, "from_field")
    assert "'result_image_paths'" in str(missing.value)
    assert "result_image_path, seed" in str(missing.value)


def test_validate_mapping_from_a_task_type_without_declared_outputs() -> None:
    outputs = {k: v for k, v in OUTPUT_FIELDS.items() if k != "GENERATION"}
    with pytest.raises(PlanError) as caught:
        validate([gen("a"), refine("b", "a")], INPUT_FIELDS, outputs)
    assert caught.value.loc == ("steps", 1, "input_mappings", 0, "from_field")
    assert "(none)" in str(caught.value)


def test_validate_mapping_transform_lists_valid_names() -> None:
    with pytest.raises(PlanError) as caught:
        validate([gen("a"), refine("b", "a", "upper")], INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps", 1, "input_mappings", 0, "transform")
    assert "'upper'" in str(caught.value)
    assert "as_float, as_int, as_list, as_string, basename, first, last" in str(caught.value)


def test_validate_checks_rules_in_order() -> None:
    # an unknown task type on step 0 and a duplicate id on step 2: ids are checked first
    assert loc_of([StepSpec("a", "TELEPORT", {}), gen("b"), gen("b")]) == ("steps", 2, "id")
    # a bad depends_on on step 0 and an unknown task type on step 1: task types first
    assert loc_of([gen("a", depends_on=("ghost",)), StepSpec("b", "TELEPORT", {})]) == ("steps", 1, "task_type")
    # a bad mapping on step 0 and a bad depends_on on step 1: depends_on first
    assert loc_of([refine("a", "ghost"), gen("b", depends_on=("b",))]) == ("steps", 1, "depends_on", 0)
    # within one mapping: from_step, then to_field, then from_field, then transform
    bad_all = Mapping("ghost", "nope", "nope", "nope")
    assert loc_of([gen("a"), StepSpec("b", "REFINE", {}, input_mappings=(bad_all,))])[-1] == "from_step"
    bad_rest = Mapping("a", "nope", "nope", "nope")
    assert loc_of([gen("a"), StepSpec("b", "REFINE", {}, input_mappings=(bad_rest,))])[-1] == "to_field"
    bad_from = Mapping("a", "nope", "base_image_url", "nope")
    assert loc_of([gen("a"), StepSpec("b", "REFINE", {}, input_mappings=(bad_from,))])[-1] == "from_field"
    # a bad mapping beats a cycle
    cyclic = [refine("a", "b"), refine("b", "a", "upper")]
    assert loc_of(cyclic) == ("steps", 1, "input_mappings", 0, "transform")


def test_validate_cycle_names_the_path() -> None:
    steps = [
        gen("a", depends_on=("c",)),
        refine("b", "a"),
        refine("c", "b"),
    ]
    with pytest.raises(PlanError) as caught:
        validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    assert caught.value.loc == ("steps",)
    assert str(caught.value) == "steps form a cycle: a → b → c → a"


def test_validate_cycle_below_an_acyclic_prefix() -> None:
    steps = [
        gen("root"),
        gen("x", depends_on=("root", "z")),
        gen("y", depends_on=("x",)),
        gen("z", depends_on=("y",)),
        gen("tail", depends_on=("z",)),
    ]
    with pytest.raises(PlanError, match=r"^steps form a cycle: x → y → z → x$"):
        validate(steps, INPUT_FIELDS, OUTPUT_FIELDS)
    with pytest.raises(PlanError, match=r"^steps form a cycle: x → y → z → x$"):
        topological_order(steps)


# --- ordering and dependencies ----------------------------------------------------------------------------------


def test_topological_order_is_stable_by_definition_order() -> None:
    steps = [gen("z"), gen("m"), refine("late", "z"), gen("a"), refine("after_a", "a"), gen("b")]
    assert topological_order(steps) == ["z", "m", "late", "a", "after_a", "b"]
    reordered = [gen("b"), gen("a"), refine("after_a", "a"), gen("m"), refine("late", "z"), gen("z")]
    assert topological_order(reordered) == ["b", "a", "after_a", "m", "z", "late"]
    assert topological_order(reordered) == topological_order(list(reordered))


def test_topological_order_puts_dependencies_first_even_when_defined_later() -> None:
    steps = [
        StepSpec("d", "IMAGE_ADJUSTER", {}, depends_on=("b", "c")),
        refine("c", "a"),
        refine("b", "a"),
        gen("a"),
    ]
    order = topological_order(steps)
    assert order == ["a", "c", "b", "d"]


def test_topological_order_rejects_unknown_dependencies_and_duplicates() -> None:
    with pytest.raises(PlanError, match="unknown step 'ghost'"):
        topological_order([gen("a"), refine("b", "ghost")])
    with pytest.raises(PlanError, match="duplicate step id 'a'"):
        topological_order([gen("a"), gen("a")])


def test_mappings_imply_dependencies() -> None:
    step = StepSpec(
        "d",
        "IMAGE_ADJUSTER",
        {},
        depends_on=("a", "b"),
        input_mappings=(Mapping("b", "result_image_path", "input_image"), Mapping("c", "seed", "mode")),
    )
    assert dependencies(step) == {"a", "b", "c"}
    assert dependencies(gen("x")) == set()

    # "b" has no depends_on: its mapping alone orders it after "a" and holds it until "a" completes
    steps = [refine("b", "a"), gen("a")]
    assert topological_order(steps) == ["a", "b"]
    assert ready_ids(plan(steps, {})) == ["a"]
    assert ready_ids(plan(steps, {"a": StepState(RUNNING)})) == []
    assert ready_ids(plan(steps, {"a": done("/a.png")})) == ["b"]
    assert plan(steps, {"a": StepState(FAILED)}).skipped == ["b"]


def test_plan_does_not_modify_its_arguments() -> None:
    steps = diamond()
    states = {"a": done("/a.png", seed=5)}
    before = (list(steps), dict(states))
    plan(steps, states)
    assert (steps, states) == before


# --- purity -----------------------------------------------------------------------------------------------------


def test_planner_imports_only_the_standard_library() -> None:
    source = Path(planner.__file__).read_text()
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "collections", "copy", "dataclasses", "enum", "heapq", "re", "typing"}, roots


def test_public_names_have_docstrings() -> None:
    for name in planner.__all__:
        obj = getattr(planner, name)
        if callable(obj):
            assert obj.__doc__, name
    assert planner.__doc__ and "cycle" in planner.__doc__
