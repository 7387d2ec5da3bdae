"""Path traversal: storage paths, image inputs that name storage paths, LoRA ``partial_path`` and upload names.

Every hostile path is refused (422, or 404 where the name is harmless but absent) and nothing is read, written,
moved or deleted outside the caller's tenant root or the LoRA folder: the whole data directory is compared
before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from atelier.core.auth import Role
from tests.api.helpers import assert_422, task_count
from tests.conftest import Api, data_url, png_bytes
from tests.security import files_under, start_app, training_count

STORAGE = "/api/v1/storage/images/"
SECRET = png_bytes((7, 7), "red")

# Raw (already percent-encoded) path suffixes that try to leave tenants/acme/, with the refusal each gets: 422
# from safe_relative_path, or 404 where the router itself does not match (a newline is not part of a path).
TRAVERSALS = {
    "dotdot_encoded": ("%2e%2e/other/secret.png", 422),
    "dotdot_slash_encoded": ("..%2fother%2fsecret.png", 422),
    "dotdot_nested": ("sub/%2e%2e/%2e%2e/other/secret.png", 422),
    "dotdot_deep": ("%2e%2e/%2e%2e/%2e%2e/outside.png", 422),
    "absolute": ("/etc/outside.png", 422),
    "absolute_encoded": ("%2fetc%2foutside.png", 422),
    "backslash": ("..%5cother%5csecret.png", 422),
    "nul": ("secret.png%00.png", 422),
    "newline": ("sec%0aret.png", 404),
    "tab": ("sec%09ret.png", 422),
    "home": ("~/outside.png", 422),
    "drive": ("C:%5coutside.png", 422),
    "spaced_dotdot": ("%20..%20/other/secret.png", 422),
}


def disk(api: Api) -> list[str]:
    """Every file of the data directory except the database's."""
    return [p for p in files_under(api.settings.data_dir) if not p.startswith("atelier.db")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = start_app(tmp_path_factory.mktemp("security-paths") / "data")
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def world(shared: Api) -> Api:
    """The shared app with another tenant's secret, a file outside storage and one LoRA file outside the root."""
    data = shared.settings.data_dir
    saved = shared.client.post(
        f"{STORAGE}secret.png", files={"file": ("s.png", SECRET, "image/png")}, headers=shared.headers("other")
    )
    assert saved.status_code == 200, saved.text
    (data / "outside.png").write_bytes(SECRET)
    (data / "outside.bin").write_bytes(b"\x00" * 16)
    (shared.settings.lora_root / "styles").mkdir(parents=True, exist_ok=True)
    return shared


def test_storage_routes_refuse_traversal(world: Api) -> None:
    before = disk(world)
    acme = world.headers()
    wrong = []
    for name, (suffix, status) in TRAVERSALS.items():
        url = STORAGE + suffix
        upload: dict[str, Any] = {"files": {"file": ("x.png", png_bytes((5, 5)), "image/png")}}
        for method, extra in (("GET", {}), ("HEAD", {}), ("DELETE", {}), ("POST", upload)):
            response = world.client.request(method, url, headers=acme, **extra)
            if response.status_code != status or SECRET in response.content:
                wrong.append(f"{name} {method}: {response.status_code} {response.text[:120]}")
    assert wrong == [], "\n".join(wrong)
    assert disk(world) == before


@pytest.mark.parametrize("prefix", ["../other", "/etc", "..\\other", "a/../../other", "x\x00y"])
def test_storage_list_refuses_a_traversing_prefix(world: Api, prefix: str) -> None:
    response = world.client.get("/api/v1/storage/images", params={"prefix": prefix}, headers=world.headers())
    assert_422(response, "prefix")
    assert "secret.png" not in response.text


@pytest.mark.parametrize(
    "path", ["../other/secret.png", "../../outside.png", "/etc/passwd", "..\\other\\secret.png", "a/../../x.png"]
)
def test_image_inputs_naming_storage_paths_refuse_traversal(world: Api, path: str) -> None:
    tasks, trainings, before = task_count(world), training_count(world), disk(world)
    task = {"task_type": "IMAGE_ADJUSTER", "input_image": path, "aspect_ratio": 1}
    assert_422(world.client.post("/api/v1/tasks/", json=task, headers=world.headers()), "input_image")
    training = {"trigger_word": "sks", "source_images": [data_url((16, 16)), path]}
    assert_422(world.client.post("/api/v1/training/", json=training, headers=world.headers()), "source_images", 1)
    workflow = {
        "name": "wf",
        "origin_instance": "tests",
        "steps": [{"id": "a", "task_type": "IMAGE_ADJUSTER", "config": {"aspect_ratio": 1, "input_image": path}}],
    }
    # A workflow's step inputs are checked when the step starts (a step may be fed by another step's output):
    # the workflow is accepted and the step fails at once, before anything is read.
    response = world.client.post("/api/v1/workflows/", json=workflow, headers=world.headers())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "FAILED" and "could not start: path" in response.json()["error_message"]
    assert response.json()["steps"][0]["task_id"] is None
    assert (task_count(world), training_count(world), disk(world)) == (tasks, trainings, before)


# ------------------------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize(
    ("partial_path", "status"),
    [
        ("../outside.bin", 422),
        ("styles/../../outside.bin", 422),
        ("../../../outside.bin", 422),
        ("/etc/outside.bin", 422),
        ("styles\\..\\..\\outside.bin", 422),
        ("styles/x.bin\x00", 422),
        ("~/outside.bin", 422),
        ("%2e%2e/outside.bin", 404),  # a literal folder name '%2e%2e' inside the root: harmless, absent
        ("escape/outside.bin", 422),  # 'escape' is a symlink out of the LoRA folder
        ("styles/.upload-x.part", 404),  # an upload's temporary file is never a LoRA file
    ],
)
def test_lora_delete_refuses_paths_that_leave_the_folder(world: Api, partial_path: str, status: int) -> None:
    link = world.settings.lora_root / "escape"
    if not link.exists():
        link.symlink_to(world.settings.data_dir, target_is_directory=True)
    (world.settings.lora_root / "styles" / ".upload-x.part").write_bytes(b"partial")
    before = disk(world)
    response = world.client.request(
        "DELETE", "/api/v1/admin/lora", json={"partial_path": partial_path}, headers=world.headers(role=Role.ADMIN)
    )
    assert response.status_code == status, response.text
    if status == 422:
        assert_422(response, "partial_path")
    assert disk(world) == before
    assert (world.settings.data_dir / "outside.bin").is_file()
    assert files_under(world.settings.lora_bin_root) == []


@pytest.mark.parametrize(
    ("raw_name", "stored"),
    [
        ("../../../outside.bin", "outside.bin"),
        ("..\\..\\outside.bin", "outside.bin"),
        ("/etc/cron.d/evil.bin", "evil.bin"),
        ("C:\\Windows\\evil.bin", "evil.bin"),
        ("..bin", None),
        ("../.bin", None),
        ("sub/../..", None),
        ("évil name;rm -rf.bin", "_vil_name_rm_-rf.bin"),
    ],
)
def test_lora_upload_names_cannot_leave_the_folder(world: Api, raw_name: str, stored: str | None) -> None:
    before = disk(world)
    lora_before = files_under(world.settings.lora_root)
    response = world.client.post(
        "/api/v1/lora/upload",
        files={"file": (raw_name, b"\x01" * 32, "application/octet-stream")},
        data={"entity_type": "styles"},
        headers=world.headers(),
    )
    if stored is None:
        assert_422(response, "file")
        assert disk(world) == before
        return
    assert response.status_code == 200, response.text
    assert response.json()["partial_path"] == f"styles/{stored}"
    added = sorted(set(files_under(world.settings.lora_root)) - set(lora_before))
    assert added == [f"styles/{stored}"]
    assert sorted(set(disk(world)) - set(before)) == [f"models/loras/styles/{stored}"]
    (world.settings.lora_root / "styles" / stored).unlink()


@pytest.mark.parametrize("entity_type", ["../..", "styles/../..", "/tmp", "..", "faces"])
def test_lora_upload_entity_type_cannot_name_a_folder(world: Api, entity_type: str) -> None:
    before = disk(world)
    response = world.client.post(
        "/api/v1/lora/upload",
        files={"file": ("ok.bin", b"\x01" * 32, "application/octet-stream")},
        data={"entity_type": entity_type},
        headers=world.headers(),
    )
    assert_422(response, "entity_type")
    assert disk(world) == before


def test_storage_upload_ignores_the_multipart_file_name(world: Api) -> None:
    before = disk(world)
    response = world.client.post(
        f"{STORAGE}inbox/ok.png",
        files={"file": ("../../../../outside-upload.png", png_bytes((5, 5)), "image/png")},
        headers=world.headers(),
    )
    assert response.status_code == 200, response.text
    assert sorted(set(disk(world)) - set(before)) == ["storage/tenants/acme/inbox/ok.png"]
    assert world.client.delete(f"{STORAGE}inbox/ok.png", headers=world.headers()).status_code == 200
