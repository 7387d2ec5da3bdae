"""Property tests (hypothesis): the workflow planner, and every place a client's string becomes a path.

Planner (``atelier.workflows.planner``, pure): random definitions, valid and not (blank and duplicate ids, unknown
task types and dependencies, self-dependencies, cycles, bad mappings): ``validate`` accepts exactly the well-formed
acyclic ones (checked against an independent reference); ``topological_order`` puts every dependency first;
driving ``plan`` to the end with random outcomes never starts a step before its dependencies completed, skips
everything under a failure transitively, and says a terminal workflow status exactly when every step is terminal.

Paths: ``safe_relative_path``, ``TenantStorage.key`` (and the local backend under it), the LoRA upload name
(``safe_filename``) and the LoRA delete's ``partial_path`` (``LoraFiles.move_to_bin``): for arbitrary strings
(``..``, absolute and drive paths, backslashes, NUL and control characters, unicode, URL-encoded dots) the result
is the documented error or a relative path that resolves inside its root.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from atelier.core.errors import InvalidInputError, NotFoundError
from atelier.core.inputs import safe_relative_path
from atelier.lora.service import ALLOWED_EXTENSIONS, BinnedLora, LoraFiles, safe_filename
from atelier.storage.backend import LocalStorage
from atelier.storage.service import TenantStorage
from atelier.workflows.planner import (
    Mapping,
    PlanError,
    StepSpec,
    StepState,
    StepStatus,
    WorkflowStatus,
    dependencies,
    plan,
    topological_order,
    validate,
)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------------------------------- the planner

INPUTS = {"make": {"prompt", "image"}, "edit": {"image", "strength"}}
OUTPUTS = {"make": {"image", "images"}, "edit": {"image"}}
TERMINAL_STEPS = {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
TERMINAL_WORKFLOW = {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
IDS = ["a", "b", "c", "d", "e", "f"]


@st.composite
def dags(draw: st.DrawFn, allow_mappings: bool = True) -> list[StepSpec]:
    """A well-formed acyclic definition: a step depends only on steps before it (then shuffled)."""
    count = draw(st.integers(1, len(IDS)))
    steps: list[StepSpec] = []
    for i in range(count):
        earlier = IDS[:i]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        mappings: list[Mapping] = []
        task_type = draw(st.sampled_from(sorted(INPUTS)))
        if allow_mappings and earlier and draw(st.booleans()):
            source = draw(st.sampled_from(earlier))
            mappings.append(Mapping(source, "image", "image"))
        steps.append(StepSpec(IDS[i], task_type, {"prompt": IDS[i]}, tuple(deps), tuple(mappings)))
    return draw(st.permutations(steps))


@st.composite
def definitions(draw: st.DrawFn) -> list[StepSpec]:
    """Anything: ids from a small alphabet (blank and repeated ones too), references possibly unknown or circular."""
    names = [*IDS[:4], "", " ", "zz"]
    count = draw(st.integers(0, 5))
    steps: list[StepSpec] = []
    for _ in range(count):
        mappings = draw(
            st.lists(
                st.builds(
                    Mapping,
                    from_step=st.sampled_from(names),
                    from_field=st.sampled_from(["image", "images.0", "nope"]),
                    to_field=st.sampled_from(["image", "prompt", "nope"]),
                    transform=st.sampled_from([None, "first", "bogus"]),
                ),
                max_size=2,
            )
        )
        steps.append(
            StepSpec(
                step_id=draw(st.sampled_from(names)),
                task_type=draw(st.sampled_from(["make", "edit", "unknown"])),
                config={},
                depends_on=tuple(draw(st.lists(st.sampled_from(names), max_size=3))),
                input_mappings=tuple(mappings),
            )
        )
    return steps


def _acyclic(steps: list[StepSpec]) -> bool:
    """Reference: repeatedly remove steps whose dependencies are all removed."""
    remaining = {step.step_id: dependencies(step) for step in steps}
    while remaining:
        free = [sid for sid, deps in remaining.items() if not deps & remaining.keys()]
        if not free:
            return False
        for sid in free:
            del remaining[sid]
    return True


def _well_formed(steps: list[StepSpec]) -> bool:
    """Reference of every rule ``validate`` documents."""
    ids = [step.step_id for step in steps]
    if not steps or any(not sid.strip() for sid in ids) or len(set(ids)) != len(ids):
        return False
    by_id = {step.step_id: step for step in steps}
    for step in steps:
        if step.task_type not in INPUTS:
            return False
        if any(dep == step.step_id or dep not in by_id for dep in step.depends_on):
            return False
        for mapping in step.input_mappings:
            if mapping.from_step == step.step_id or mapping.from_step not in by_id:
                return False
            if mapping.to_field not in INPUTS[step.task_type]:
                return False
            if mapping.from_field.split(".", 1)[0] not in OUTPUTS.get(by_id[mapping.from_step].task_type, set()):
                return False
            if mapping.transform not in (None, "first"):
                return False
    return _acyclic(steps)


def _valid(steps: list[StepSpec]) -> bool:
    refusal: PlanError | None = None
    try:
        validate(steps, INPUTS, OUTPUTS)
    except PlanError as exc:
        refusal = exc
    if refusal is None:
        return True
    assert refusal.loc and refusal.loc[0] == "steps", refusal.loc
    return False


@PROPS
@given(definitions())
def test_validate_accepts_exactly_the_well_formed_acyclic_definitions(steps: list[StepSpec]) -> None:
    assert _valid(steps) == _well_formed(steps)


@PROPS
@given(dags())
def test_generated_dags_are_valid(steps: list[StepSpec]) -> None:
    validate(steps, INPUTS, OUTPUTS)


@PROPS
@given(dags(), st.data())
def test_a_back_edge_makes_a_cycle(steps: list[StepSpec], data: st.DataObject) -> None:
    """Adding an edge from a step to one of its (transitive) dependants is refused as a cycle."""
    order = topological_order(steps)
    assume(len(order) >= 2)
    low, high = sorted(data.draw(st.lists(st.integers(0, len(order) - 1), min_size=2, max_size=2, unique=True)))
    before, after = order[low], order[high]
    reachable = {before}
    for sid in order[low + 1 :]:
        step = next(s for s in steps if s.step_id == sid)
        if dependencies(step) & reachable:
            reachable.add(sid)
    assume(after in reachable)
    patched = [
        StepSpec(s.step_id, s.task_type, s.config, (*s.depends_on, after), s.input_mappings)
        if s.step_id == before
        else s
        for s in steps
    ]
    with pytest.raises(PlanError, match="cycle") as caught:
        validate(patched, INPUTS, OUTPUTS)
    assert caught.value.loc == ("steps",)
    with pytest.raises(PlanError, match="cycle"):
        topological_order(patched)


@PROPS
@given(definitions())
def test_topological_order_respects_every_edge(steps: list[StepSpec]) -> None:
    """An order exactly when ids are unique, references known and the graph acyclic; dependencies first."""
    ids = [step.step_id for step in steps]
    orderable = len(set(ids)) == len(ids) and all(dependencies(s) <= set(ids) for s in steps) and _acyclic(steps)
    try:
        order = topological_order(steps)
    except PlanError:
        assert not orderable
        return
    assert orderable
    assert sorted(order) == sorted(step.step_id for step in steps)
    position = {sid: i for i, sid in enumerate(order)}
    for step in steps:
        for dep in dependencies(step):
            assert position[dep] < position[step.step_id]


@PROPS
@given(dags())
def test_topological_order_of_dags(steps: list[StepSpec]) -> None:
    position = {sid: i for i, sid in enumerate(topological_order(steps))}
    assert len(position) == len(steps)
    for step in steps:
        assert all(position[dep] < position[step.step_id] for dep in dependencies(step))


def _dependants_closure(steps: list[StepSpec], roots: set[str]) -> set[str]:
    """Every step that depends, directly or transitively, on one of ``roots`` (roots excluded)."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.step_id not in found and dependencies(step) & (roots | found):
                found.add(step.step_id)
                changed = True
    return found - roots


OUTCOMES = st.sampled_from([StepStatus.COMPLETED] * 4 + [StepStatus.FAILED, StepStatus.CANCELLED, "no image"])


@PROPS
@given(dags(), st.data())
def test_plan_runs_a_workflow_to_a_consistent_end(steps: list[StepSpec], data: st.DataObject) -> None:
    """Drive ``plan`` like the service does, with random outcomes, checking every plan on the way."""
    by_id = {step.step_id: step for step in steps}
    states: dict[str, StepState] = {}
    for _ in range(4 * len(steps) + 2):
        current = plan(steps, states)
        status_of = {sid: (states[sid].status if sid in states else StepStatus.PENDING) for sid in by_id}
        for ready in current.ready:
            # never before the dependencies finished, and with the mapped value laid over the config
            assert status_of[ready.step_id] is StepStatus.PENDING
            assert all(status_of[dep] is StepStatus.COMPLETED for dep in dependencies(by_id[ready.step_id]))
            for mapping in by_id[ready.step_id].input_mappings:
                result = states[mapping.from_step].result
                assert result is not None
                assert ready.inputs[mapping.to_field] == result["image"]
        blocked = {sid for sid, status in status_of.items() if status in (StepStatus.FAILED, StepStatus.CANCELLED)}
        blocked |= set(current.errors)
        pending_under = {sid for sid in _dependants_closure(steps, blocked) if status_of[sid] is StepStatus.PENDING}
        assert set(current.skipped) == pending_under  # transitively, and nothing else
        assert not set(current.skipped) & {r.step_id for r in current.ready}
        assert current.failed_steps == [sid for sid in topological_order(steps) if status_of[sid] is StepStatus.FAILED]

        after = dict(status_of)  # as the service leaves it after applying the plan
        after.update(dict.fromkeys(current.skipped, StepStatus.SKIPPED))
        after.update(dict.fromkeys(current.errors, StepStatus.FAILED))
        everything_final = all(status in TERMINAL_STEPS for status in after.values()) and not current.ready
        assert (current.status in TERMINAL_WORKFLOW) == everything_final, (current.status, after)
        if everything_final:
            expected = (
                WorkflowStatus.CANCELLED
                if StepStatus.CANCELLED in after.values()
                else WorkflowStatus.FAILED
                if StepStatus.FAILED in after.values()
                else WorkflowStatus.COMPLETED
            )
            assert current.status is expected
            return

        for sid in current.skipped:
            states[sid] = StepState(StepStatus.SKIPPED)
        for sid in current.errors:
            states[sid] = StepState(StepStatus.FAILED)
        for ready in current.ready:
            states[ready.step_id] = StepState(StepStatus.RUNNING)
        running = [sid for sid in by_id if sid in states and states[sid].status is StepStatus.RUNNING]
        for sid in data.draw(st.lists(st.sampled_from(running), unique=True, min_size=1)) if running else []:
            outcome = data.draw(OUTCOMES)
            if outcome == "no image":  # completed, but without the field a mapping reads: an error downstream
                states[sid] = StepState(StepStatus.COMPLETED, {"other": 1})
            else:
                assert isinstance(outcome, StepStatus)
                result = {"image": f"out/{sid}.png", "images": [f"out/{sid}.png"]}
                states[sid] = StepState(outcome, result if outcome is StepStatus.COMPLETED else None)
    raise AssertionError(f"the workflow never finished: {states}")


@PROPS
@given(dags(allow_mappings=False), st.data())
def test_a_failure_skips_everything_below_it_at_once(steps: list[StepSpec], data: st.DataObject) -> None:
    order = topological_order(steps)
    failed = data.draw(st.sampled_from(order))
    position = order.index(failed)
    states = {sid: StepState(StepStatus.COMPLETED, {"image": "x"}) for sid in order[:position]}
    states[failed] = StepState(data.draw(st.sampled_from([StepStatus.FAILED, StepStatus.CANCELLED])))
    current = plan(steps, states)
    below = _dependants_closure(steps, {failed})
    assert set(current.skipped) == below
    assert not below & {r.step_id for r in current.ready}
    assert current.status not in TERMINAL_WORKFLOW or not (set(order) - set(states) - below)


# --------------------------------------------------------------------------------------------------------- paths

TRICKY_PARTS = [
    "..",
    ".",
    "",
    "...",
    " .. ",
    "..\\..",
    "\\",
    "/",
    "//",
    "~",
    "~root",
    "C:",
    "c:\\windows",
    "%2e%2e",
    "%2E%2E%2F",
    "..%2f",
    "%00",
    "\x00",
    "\n",
    "\x7f",
    "\u2024\u2024",  # one-dot leaders
    "\uff0e\uff0e",  # fullwidth full stops
    "\u202e",
    "é",
    "😀",
    "a",
    "b.png",
    "tenants",
    "etc",
    "passwd",
]
paths = st.one_of(
    st.lists(st.sampled_from(TRICKY_PARTS), max_size=6).map("/".join),
    st.lists(st.sampled_from(TRICKY_PARTS), max_size=6).map("".join),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from([*string.ascii_letters[:3], ".", "/", "\\", "%", "2", "e", "f", " ", "\x00"])),
)


def _inside(root: Path, relative: str) -> bool:
    resolved = (root / relative).resolve()
    return resolved.is_relative_to(root.resolve())


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root") / "inner"
    root.mkdir()
    return root


@PROPS
@given(paths)
def test_safe_relative_path_is_an_error_or_stays_inside(tmp_root: Path, raw: str) -> None:
    try:
        key = safe_relative_path(raw, loc=("path",))
    except InvalidInputError as exc:
        refusal: InvalidInputError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert (refusal.http_status, refusal.loc) == (422, ("path",))
        return
    assert key and not key.startswith("/") and "\\" not in key and "\x00" not in key
    assert all(segment not in ("", ".", "..") and segment.strip() != ".." for segment in key.split("/"))
    assert _inside(tmp_root, key)
    assert safe_relative_path(key) == key  # normalised: a fixed point


@PROPS
@given(paths, st.sampled_from(["acme", "a.b-c_1", "x"]))
def test_tenant_storage_keys_stay_in_the_tenants_folder(tmp_root: Path, raw: str, tenant: str) -> None:
    storage = TenantStorage(LocalStorage(tmp_root), tenant)
    try:
        key = storage.key(raw)
    except InvalidInputError:
        return
    assert key.startswith(f"tenants/{tenant}/")
    assert _inside(tmp_root / "tenants" / tenant, key.removeprefix(f"tenants/{tenant}/"))
    assert storage.stat(raw) is None  # the backend accepts the key (no escape error) and finds nothing there


@PROPS
@given(paths)
def test_lora_upload_names_are_plain_file_names(tmp_root: Path, raw: str) -> None:
    try:
        name = safe_filename(raw)
    except InvalidInputError as exc:
        refusal: InvalidInputError | None = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.loc == ("body", "file")
        return
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.lower().endswith(ALLOWED_EXTENSIONS)
    assert _inside(tmp_root / "faces", name)
    assert (tmp_root / "faces" / name).resolve().parent == (tmp_root / "faces").resolve()


@pytest.fixture(scope="module")
def lora_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA root and bin, and files a traversal would like to reach: beside the root and in its parent."""
    base = tmp_path_factory.mktemp("lora")
    root, bin_root = base / "loras", base / "bin"
    (root / "faces").mkdir(parents=True)
    bin_root.mkdir()
    outside = base / "secret.safetensors"
    outside.write_bytes(b"outside")
    (base / "etc").mkdir()
    (base / "etc" / "passwd.safetensors").write_bytes(b"outside")
    return {"base": base, "root": root, "bin": bin_root}


def _snapshot(base: Path, skip: tuple[Path, ...]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for folder, _, names in os.walk(base):
        for name in names:
            path = Path(folder) / name
            if not any(path.is_relative_to(s) for s in skip):
                files[str(path)] = path.read_bytes()
    return files


lora_paths = st.one_of(
    paths,
    st.lists(st.sampled_from(["..", ".", "faces", "etc", "loras", "kept.safetensors", "secret.safetensors", "%2e%2e"]))
    .map("/".join)
    .filter(bool),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lora_paths)
def test_lora_delete_never_leaves_its_folders(lora_tree: dict[str, Path], raw: str) -> None:
    """``partial_path`` is refused (422), unknown (404) or a file inside the root moved inside the bin."""
    base, root, bin_root = lora_tree["base"], lora_tree["root"], lora_tree["bin"]
    planted = root / "faces" / "kept.safetensors"
    planted.write_bytes(b"lora")
    before = _snapshot(base, (root, bin_root))
    files = LoraFiles(root, bin_root, max_bytes=1024)
    moved: BinnedLora | None = None
    refusal: InvalidInputError | None = None
    try:
        moved = files.move_to_bin(raw)
    except InvalidInputError as exc:
        refusal = exc
    except NotFoundError:
        pass
    assert refusal is None or refusal.loc == ("body", "partial_path")
    assert _snapshot(base, (root, bin_root)) == before  # nothing outside the two folders changed
    if moved is not None:
        assert moved.full_path.resolve() == planted.resolve()
        assert moved.bin_path.resolve().is_relative_to(bin_root.resolve())
        assert not planted.exists()
