"""LoRA file operations: streamed uploads, names and versions, safetensors checks, limits, roles, the bin."""

from __future__ import annotations

import io
import json
import struct
import threading
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from httpx import Response

from atelier.core.auth import Role
from atelier.core.errors import ConflictError, InvalidInputError
from atelier.lora.service import LoraFiles, check_safetensors, safe_filename
from tests.api.helpers import assert_422
from tests.conftest import Api, AppFactory

UPLOAD = "/api/v1/lora/upload"
ADMIN_UPLOAD = "/api/v1/admin/lora/upload"
ADMIN_DELETE = "/api/v1/admin/lora"
MIB = 1024 * 1024


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]] | None = None) -> bytes:
    """A safetensors file built by hand: u64 header length, JSON header padded with spaces, data buffer."""
    if tensors is None:
        tensors = {"lora_up.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data


def raw_safetensors(header: Any, data: bytes = b"", declared: int | None = None) -> bytes:
    """A safetensors-like file with an arbitrary header (and optionally a lying header length)."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded) if declared is None else declared) + encoded + data


def upload(
    api: Api,
    name: str,
    data: bytes,
    *,
    url: str = UPLOAD,
    role: Role | None = Role.SERVICE,
    **form: Any,
) -> Response:
    """POST a LoRA upload (multipart); ``role=None`` sends no token."""
    headers = api.headers(role=role) if role is not None else {}
    fields = {key: str(value).lower() if isinstance(value, bool) else value for key, value in form.items()}
    files = {"file": (name, data, "application/octet-stream")}
    response: Response = api.client.post(url, files=files, data=fields, headers=headers)
    return response


def delete(api: Api, partial_path: Any, role: Role | None = Role.ADMIN) -> Response:
    """DELETE /admin/lora with a JSON body."""
    headers = api.headers(role=role) if role is not None else {}
    response: Response = api.client.request(
        "DELETE", ADMIN_DELETE, json={"partial_path": partial_path}, headers=headers
    )
    return response


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (hidden temporary files included), relative, sorted."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_valid_safetensors_upload_is_stored_and_described(idle_api: Api) -> None:
    data = safetensors_bytes()
    response = upload(idle_api, "my_lora.safetensors", data, entity_type="identities")
    assert response.status_code == 200, response.text
    body = response.json()
    root = idle_api.settings.lora_root
    assert set(body) == {"file_path", "partial_path", "filename", "file_size", "upload_timestamp"}
    assert body["partial_path"] == "identities/my_lora.safetensors"
    assert body["filename"] == "my_lora.safetensors"
    assert body["file_size"] == len(data)
    assert body["file_path"] == str(root / "identities" / "my_lora.safetensors")
    assert body["upload_timestamp"].endswith("Z")
    assert datetime.fromisoformat(body["upload_timestamp"]).utcoffset() is not None
    assert Path(body["file_path"]).read_bytes() == data
    assert files_under(root) == ["identities/my_lora.safetensors"]  # no temporary file left


def test_default_entity_type_and_settings_location(app_factory: AppFactory, tmp_path: Path) -> None:
    api = app_factory(worker=False, lora={"root": tmp_path / "loras", "bin_root": tmp_path / "bin"})
    response = upload(api, "x.bin", b"weights")
    assert response.status_code == 200, response.text
    assert response.json()["partial_path"] == "no_type_provided/x.bin"
    assert (tmp_path / "loras" / "no_type_provided" / "x.bin").read_bytes() == b"weights"


def test_duplicates_are_versioned(idle_api: Api) -> None:
    names = []
    for index in range(3):
        data = safetensors_bytes({"w": ("U8", [1], bytes([index]))})
        response = upload(idle_api, "style.safetensors", data, entity_type="styles")
        assert response.status_code == 200, response.text
        names.append(response.json()["partial_path"])
        assert Path(response.json()["file_path"]).read_bytes() == data
    assert names == ["styles/style.safetensors", "styles/style_v2.safetensors", "styles/style_v3.safetensors"]
    assert files_under(idle_api.settings.lora_root) == sorted(names)


def test_duplicate_without_safe_filename_is_409(idle_api: Api) -> None:
    first = safetensors_bytes()
    assert upload(idle_api, "dup.safetensors", first, entity_type="product").status_code == 200
    second = safetensors_bytes({"w": ("U8", [3], b"abc")})
    response = upload(idle_api, "dup.safetensors", second, entity_type="product", use_safe_filename=False)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    root = idle_api.settings.lora_root
    assert (root / "product" / "dup.safetensors").read_bytes() == first
    assert files_under(root) == ["product/dup.safetensors"]
    fresh = upload(idle_api, "fresh.safetensors", second, entity_type="product", use_safe_filename=False)
    assert fresh.status_code == 200 and fresh.json()["partial_path"] == "product/fresh.safetensors"


@pytest.mark.parametrize("name", ["model.txt", "model", "model.safetensors.exe", ".safetensors", "_.pt", "..."])
def test_bad_file_names_are_422(idle_api: Api, name: str) -> None:
    assert_422(upload(idle_api, name, b"data"), "body", "file")
    assert files_under(idle_api.settings.lora_root) == []


@pytest.mark.parametrize("name", ["m.ckpt", "m.pt", "m.pth", "m.bin", "M.SafeTensors"])
def test_every_documented_extension_is_accepted(idle_api: Api, name: str) -> None:
    data = safetensors_bytes() if name.lower().endswith(".safetensors") else b"\x80\x04opaque pickle"
    response = upload(idle_api, name, data, entity_type="clothes")
    assert response.status_code == 200, response.text
    assert response.json()["partial_path"] == f"clothes/{name}"


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("../../evil.safetensors", "evil.safetensors"),
        ("..\\..\\windows\\evil.pt", "evil.pt"),
        ("/etc/cron.d/job.bin", "job.bin"),
        ("my lora (final)é.pt", "my_lora__final__.pt"),
        ("..hidden.bin", "hidden.bin"),
    ],
)
def test_file_names_are_made_safe(idle_api: Api, tmp_path: Path, raw: str, stored: str) -> None:
    data = safetensors_bytes() if stored.endswith(".safetensors") else b"weights"
    response = upload(idle_api, raw, data, entity_type="identities")
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == stored
    assert files_under(idle_api.settings.lora_root) == [f"identities/{stored}"]
    assert not (tmp_path / "evil.safetensors").exists() and not (tmp_path / "data" / "evil.safetensors").exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty
        b"\x05\x00\x00",  # shorter than the length prefix
        struct.pack("<Q", 10_000) + b"{}",  # header length beyond the file
        struct.pack("<Q", 0) + b"{}",  # zero header length
        struct.pack("<Q", 3) + b"abc",  # not JSON
        raw_safetensors([1, 2]),  # not an object
        raw_safetensors({"w": {"shape": [1], "data_offsets": [0, 1]}}, b"x"),  # no dtype
        raw_safetensors({"w": {"dtype": "U8", "shape": "1", "data_offsets": [0, 1]}}, b"x"),  # bad shape
        raw_safetensors({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"x"),  # bad offsets
        raw_safetensors({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"xy"),  # truncated data
        raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"wxyz"),  # size ≠ dtype
        raw_safetensors({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"xy"),  # trailing bytes
        raw_safetensors({"__metadata__": {"a": 1}}),  # metadata must be strings
        safetensors_bytes()[:-3],  # cut off
    ],
)
def test_invalid_safetensors_are_422_and_leave_nothing(idle_api: Api, data: bytes) -> None:
    assert_422(upload(idle_api, "broken.safetensors", data, entity_type="identities"), "body", "file")
    assert files_under(idle_api.settings.lora_root) == []


def test_safetensors_check_accepts_real_layouts() -> None:
    tensors = {
        "a": ("BF16", [2, 3], bytes(12)),
        "b": ("I64", [1], bytes(8)),
        "empty": ("F16", [0, 4], b""),
        "c": ("F8_E4M3", [5], bytes(5)),
    }
    data = safetensors_bytes(tensors)
    check_safetensors(io.BytesIO(data), len(data))
    header_only = raw_safetensors({})
    check_safetensors(io.BytesIO(header_only), len(header_only))


def test_safe_filename_refuses_unusable_names() -> None:
    assert safe_filename("a/b/c.PTH") == "c.PTH"
    for bad in (None, "", "/", "dir/", "x.safetensors/", "-.bin"):
        with pytest.raises(InvalidInputError):
            safe_filename(bad)


def test_entity_types(idle_api: Api) -> None:
    for entity in ("clothes", "identities", "product", "styles"):
        response = upload(idle_api, "e.bin", b"w", entity_type=entity)
        assert response.status_code == 200 and response.json()["partial_path"] == f"{entity}/e.bin"
    for entity in ("faces", "../etc", "identities/x", "other"):
        assert_422(upload(idle_api, "e.bin", b"w", entity_type=entity), "body", "entity_type")
    admin = upload(idle_api, "f.bin", b"w", url=ADMIN_UPLOAD, role=Role.ADMIN, entity_type="faces")
    assert admin.status_code == 200, admin.text
    assert admin.json()["entity_type"] == "faces" and admin.json()["partial_path"] == "faces/f.bin"
    plain = upload(idle_api, "g.bin", b"w", url=ADMIN_UPLOAD, role=Role.ADMIN)
    assert plain.json()["entity_type"] == "no_type_provided"
    assert_422(upload(idle_api, "e.bin", b"w", url=ADMIN_UPLOAD, role=Role.ADMIN, entity_type="../x"), "entity_type")
    assert not (idle_api.settings.lora_root.parent / "x").exists()


def test_size_cap_is_413_without_leftovers(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, lora={"max_bytes": 1000})
    too_big = upload(api, "big.bin", bytes(1001), entity_type="styles")
    assert too_big.status_code == 413, too_big.text
    assert too_big.json() == {"detail": "the LoRA file is larger than 1000 bytes", "code": "payload_too_large"}
    assert files_under(api.settings.lora_root) == []
    assert upload(api, "fits.bin", bytes(1000), entity_type="styles").status_code == 200
    huge = upload(api, "huge.bin", bytes(2 * MIB), entity_type="styles")  # refused by the body limit
    assert huge.status_code == 413 and huge.json()["code"] == "payload_too_large"
    assert files_under(api.settings.lora_root) == ["styles/fits.bin"]


def test_lora_uploads_get_their_own_body_allowance(app_factory: AppFactory) -> None:
    api = app_factory(worker=False, storage={"max_upload_bytes": 1000}, inputs={"max_bytes": 1000})
    data = bytes(3 * MIB)  # above the general body limit (≈1 MiB + 2 kB), below the LoRA cap
    image = api.client.post(
        "/api/v1/storage/images/x.png", files={"file": ("x.png", data, "image/png")}, headers=api.headers()
    )
    assert image.status_code == 413
    response = upload(api, "large.bin", data, entity_type="styles")
    assert response.status_code == 200, response.text
    assert response.json()["file_size"] == len(data)


def test_roles(idle_api: Api) -> None:
    assert upload(idle_api, "a.bin", b"w", role=None).status_code == 401
    assert upload(idle_api, "a.bin", b"w", role=Role.VIEWER).status_code == 403
    assert upload(idle_api, "a.bin", b"w", url=ADMIN_UPLOAD, role=None).status_code == 401
    for role in (Role.SERVICE, Role.VIEWER):
        refused = upload(idle_api, "a.bin", b"w", url=ADMIN_UPLOAD, role=role, entity_type="faces")
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert files_under(idle_api.settings.lora_root) == []
    stored = upload(idle_api, "a.bin", b"w", entity_type="styles")
    assert stored.status_code == 200
    assert delete(idle_api, "styles/a.bin", role=None).status_code == 401
    assert delete(idle_api, "styles/a.bin", role=Role.SERVICE).status_code == 403
    assert delete(idle_api, "../bad", role=Role.SERVICE).status_code == 403  # the role is checked first
    assert files_under(idle_api.settings.lora_root) == ["styles/a.bin"]


def test_delete_moves_to_the_bin(idle_api: Api) -> None:
    data = safetensors_bytes()
    stored = upload(
        idle_api, "Sh0ot1f1_01.safetensors", data, url=ADMIN_UPLOAD, role=Role.ADMIN, entity_type="identities"
    )
    partial = stored.json()["partial_path"]
    response = delete(idle_api, partial)
    assert response.status_code == 200, response.text
    body = response.json()
    root, bin_root = idle_api.settings.lora_root, idle_api.settings.lora_bin_root
    assert body["deleted"] is True
    assert body["full_path"] == str(root / "identities" / "Sh0ot1f1_01.safetensors") == stored.json()["file_path"]
    assert body["bin_path"] == str(bin_root / "identities" / "Sh0ot1f1_01.safetensors")
    assert body["timestamp"].endswith("Z")
    assert files_under(root) == []
    assert Path(body["bin_path"]).read_bytes() == data
    again = delete(idle_api, partial)
    assert again.status_code == 404 and again.json()["code"] == "not_found"

    # the same name deleted a second time keeps the first copy in the bin
    newer = safetensors_bytes({"w": ("U8", [2], b"hi")})
    assert upload(idle_api, "Sh0ot1f1_01.safetensors", newer, entity_type="identities").status_code == 200
    second = delete(idle_api, partial)
    assert second.status_code == 200
    assert second.json()["bin_path"] != body["bin_path"]
    assert Path(body["bin_path"]).read_bytes() == data
    assert Path(second.json()["bin_path"]).read_bytes() == newer
    assert len(files_under(bin_root)) == 2


@pytest.mark.parametrize(
    "partial", ["../x.safetensors", "/etc/passwd", "identities/../../etc/x.bin", "~/x.bin", "a\\..\\b.bin", ""]
)
def test_delete_refuses_traversal(idle_api: Api, partial: str) -> None:
    assert_422(delete(idle_api, partial), "partial_path")


@pytest.mark.parametrize("partial", ["identities/missing.safetensors", "identities", "nowhere/x.bin", "x.bin"])
def test_delete_of_missing_files_is_404(idle_api: Api, partial: str) -> None:
    assert upload(idle_api, "present.bin", b"w", entity_type="identities").status_code == 200
    assert delete(idle_api, partial).status_code == 404
    assert files_under(idle_api.settings.lora_root) == ["identities/present.bin"]


def test_delete_does_not_follow_symlinks_out_of_the_root(idle_api: Api, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"keep")
    root = idle_api.settings.lora_root
    root.mkdir(parents=True, exist_ok=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "styles").mkdir()
    (root / "styles" / "link.bin").symlink_to(outside / "secret.bin")
    assert_422(delete(idle_api, "escape/secret.bin"), "partial_path")
    assert delete(idle_api, "styles/link.bin").status_code == 404
    assert (outside / "secret.bin").read_bytes() == b"keep"


def test_upload_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 20 MB upload never sits in memory: the traced peak stays a small fraction of the file."""
    size = 20 * MIB
    source = tmp_path / "big.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    with source.open("wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        block = bytes(MIB)  # written block by block: the test itself never holds the file either
        for _ in range(size // MIB):
            out.write(block)
    files = LoraFiles(tmp_path / "loras", tmp_path / "bin", max_bytes=500 * MIB)
    tracemalloc.start()
    try:
        with source.open("rb") as stream:
            stored = files.save(stream, "big.safetensors", "identities", versioned=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == source.stat().st_size > size
    assert peak < 4 * MIB, peak
    assert stored.path.stat().st_size == stored.size


def test_concurrent_uploads_of_one_name_never_overwrite(tmp_path: Path) -> None:
    """Uploads of one name at once: each gets its own version (or a 409), and every file keeps its bytes."""
    files = LoraFiles(tmp_path / "loras", tmp_path / "bin", max_bytes=MIB)
    count = 12
    barrier = threading.Barrier(count)
    stored: dict[str, bytes] = {}  # partial path -> the bytes its upload sent
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(index: int, entity: str, versioned: bool) -> None:
        data = safetensors_bytes({"w": ("U8", [1], bytes([index]))})
        barrier.wait()
        try:
            result = files.save(io.BytesIO(data), "same.safetensors", entity, versioned=versioned)
        except ConflictError:
            outcome = "conflict"
        except Exception as exc:  # reported by the main thread
            outcome = repr(exc)
        else:
            outcome = "stored"
            with lock:
                stored[result.partial_path] = data
        with lock:
            outcomes.append(outcome)

    for entity, versioned in (("styles", True), ("clothes", False)):
        barrier.reset()
        threads = [threading.Thread(target=run, args=(i, entity, versioned)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(outcomes) == ["conflict"] * (count - 1) + ["stored"] * (count + 1)
    styles = [p for p in stored if p.startswith("styles/")]
    expected = ["styles/same.safetensors"] + [f"styles/same_v{n}.safetensors" for n in range(2, count + 1)]
    assert sorted(styles) == sorted(expected)
    assert [p for p in stored if p.startswith("clothes/")] == ["clothes/same.safetensors"]
    assert files_under(tmp_path / "loras") == sorted(stored)
    for partial, data in stored.items():
        assert (tmp_path / "loras" / partial).read_bytes() == data
