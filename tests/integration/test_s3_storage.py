"""S3Storage against a real SeaweedFS server: the backend on its own, then the API and the worker on top of it."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from atelier.core.errors import InvalidInputError, NotFoundError, ServiceUnavailableError
from atelier.settings import StorageSettings
from atelier.storage.backend import LocalStorage, StorageBackend
from atelier.storage.s3 import S3Storage
from tests.conftest import Api, AppFactory, data_url, png_bytes
from tests.integration.seaweed import SeaweedServer, free_ports

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
URL = "/api/v1/storage/images/"


@pytest.fixture
def storage(s3_settings: dict[str, Any]) -> S3Storage:
    """An S3Storage on a fresh bucket (created by the constructor)."""
    return S3Storage(StorageSettings(**s3_settings))


@pytest.fixture
def s3(seaweed: SeaweedServer) -> S3Client:
    """A plain boto3 client, to look at the bucket behind the backend's back."""
    return seaweed.client()


def bucket_keys(s3: S3Client, bucket: str, prefix: str = "") -> list[str]:
    """Every key in ``bucket`` under ``prefix``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


class ChunkRecorder(io.BytesIO):
    """A stream that records the size of every read, to prove uploads are never read whole."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        """Read and remember how much was asked for (-1/None = everything)."""
        self.reads.append(-1 if size is None or size < 0 else size)
        return super().read(size)


# --- backend ------------------------------------------------------------------------------------------------------


def test_bucket_is_created_only_when_asked(s3_settings: dict[str, Any], s3: S3Client) -> None:
    bucket = s3_settings["s3_bucket"]
    S3Storage(StorageSettings(**{**s3_settings, "s3_create_bucket": False}))
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=bucket)
    S3Storage(StorageSettings(**s3_settings))
    s3.head_bucket(Bucket=bucket)
    S3Storage(StorageSettings(**s3_settings))  # an existing bucket is fine


def test_save_bytes_and_read_back(storage: S3Storage, s3: S3Client) -> None:
    data = png_bytes((12, 9))
    info = storage.save("tenants/acme/p/shoe.png", data)
    assert (info.key, info.size, info.content_type) == ("tenants/acme/p/shoe.png", len(data), "image/png")
    assert info.last_modified.tzinfo is not None
    assert storage.read("tenants/acme/p/shoe.png") == data
    assert bucket_keys(s3, storage.bucket) == ["tenants/acme/p/shoe.png"]


def test_large_stream_is_uploaded_multipart_in_chunks(storage: S3Storage, s3: S3Client) -> None:
    data = os.urandom(11 * MiB)
    stream = ChunkRecorder(data)
    info = storage.save("big/blob.bin", stream)
    assert info.size == len(data)
    etag = s3.head_object(Bucket=storage.bucket, Key="big/blob.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # 11 MiB in 5 MiB parts: a 3-part multipart upload
    assert stream.reads and -1 not in stream.reads and max(stream.reads) <= 5 * MiB
    assert storage.read("big/blob.bin") == data


def test_stream_yields_chunks(storage: S3Storage) -> None:
    data = os.urandom(2 * MiB + 123)
    storage.save("s/blob.bin", data)
    chunks = list(storage.stream("s/blob.bin"))
    assert len(chunks) == 3 and all(len(c) <= MiB for c in chunks)
    assert b"".join(chunks) == data


def test_stat_reports_size_and_content_type(storage: S3Storage) -> None:
    storage.save("x/given.bin", b"12345", "image/webp")
    storage.save("x/guessed.jpg", b"123")
    given, guessed = storage.stat("x/given.bin"), storage.stat("x/guessed.jpg")
    assert given is not None and (given.size, given.content_type) == (5, "image/webp")
    assert guessed is not None and (guessed.size, guessed.content_type) == (3, "image/jpeg")


def test_missing_objects(storage: S3Storage) -> None:
    assert storage.stat("nope.png") is None
    with pytest.raises(NotFoundError):
        storage.read("nope.png")
    with pytest.raises(NotFoundError):
        storage.stream("nope.png")  # raised by the call itself, before any chunk is asked for
    assert storage.delete("nope.png") is False


def test_missing_bucket_reads_as_missing(s3_settings: dict[str, Any]) -> None:
    storage = S3Storage(StorageSettings(**{**s3_settings, "s3_create_bucket": False}))
    assert storage.stat("a.png") is None
    with pytest.raises(NotFoundError):
        storage.read("a.png")


def test_delete_returns_true_then_false(storage: S3Storage, s3: S3Client) -> None:
    storage.save("d/one.png", b"1")
    assert storage.delete("d/one.png") is True
    assert storage.delete("d/one.png") is False
    assert bucket_keys(s3, storage.bucket) == []


def test_delete_prefix_removes_only_that_folder(storage: S3Storage, s3: S3Client) -> None:
    for key in ["a/1.png", "a/sub/2.png", "a-b/x.png", "ab.png", "a.png"]:
        storage.save(key, b"x")
    assert storage.delete_prefix("a") == ["a/1.png", "a/sub/2.png"]
    assert bucket_keys(s3, storage.bucket) == ["a-b/x.png", "a.png", "ab.png"]
    assert storage.delete_prefix("a-b/") == ["a-b/x.png"]
    assert storage.delete_prefix("") == [] and storage.delete_prefix("/") == []  # never the whole bucket
    assert storage.delete_prefix("missing") == []
    assert bucket_keys(s3, storage.bucket) == ["a.png", "ab.png"]


def test_many_keys_list_across_pages_and_delete_in_batches(storage: S3Storage, s3: S3Client) -> None:
    keys = [f"many/{i:04d}.png" for i in range(1003)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=storage.bucket, Key=k, Body=b"x"), keys))
    storage.save("many-other/keep.png", b"x")
    assert [i.key for i in storage.list("many/", 1002)] == keys[:1002]
    assert [i.key for i in storage.list("many/", 5, start_after="many/0999.png")] == keys[1000:]
    assert storage.delete_prefix("many") == keys
    assert bucket_keys(s3, storage.bucket) == ["many-other/keep.png"]


# Where a sibling name has a character below "/" next to a folder of the same stem ("a-b", "a.png" beside "a/"),
# SeaweedFS 4.48 lists in folder-tree order ("a/…" first) instead of S3's byte order: such keys are tested apart.
LIST_KEYS = [
    "t/a/1.png",
    "t/a/10.png",
    "t/a/2.png",
    "t/a/B.png",
    "t/a/_x.png",
    "t/a/sub/z.png",
    "t/a/subz.png",
    "t/ab/c.png",
    "t/b/1.png",
    "u/other.png",
]
LIST_CASES = [
    ("t/", 100, None),
    ("t/a", 100, None),
    ("t/a/", 100, None),
    ("t/a/", 2, None),
    ("t/a/", 3, "t/a/10.png"),
    ("t/a/s", 10, None),
    ("t/", 4, "t/a/sub/z.png"),
    ("t/zzz", 10, None),
    ("", 100, "t/b/1.png"),
    ("t/", 100, "t/b/1.png"),
    ("t/a/", 10, "t/0.png"),  # a cursor before the prefix skips nothing
    ("t/a/", 10, "t/b"),  # a cursor after the prefix leaves nothing
]


def test_list_matches_local_storage(storage: S3Storage, tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "local")
    backends: list[StorageBackend] = [local, storage]
    for i, key in enumerate(LIST_KEYS):
        for backend in backends:
            backend.save(key, b"x" * i)
    for prefix, limit, after in LIST_CASES:
        want = [(o.key, o.size, o.content_type) for o in local.list(prefix, limit, after)]
        got = [(o.key, o.size, o.content_type) for o in storage.list(prefix, limit, after)]
        assert got == want, (prefix, limit, after)
    assert [o.key for o in storage.list("t/a/", 100)][:4] == ["t/a/1.png", "t/a/10.png", "t/a/2.png", "t/a/B.png"]


def test_paging_visits_every_key_once_where_seaweed_order_differs(storage: S3Storage, tmp_path: Path) -> None:
    keys = ["t/a/1.png", "t/a/2.png", "t/a-b/x.png", "t/a.png", "t/ab.png"]
    local = LocalStorage(tmp_path / "local")
    for key in keys:
        storage.save(key, b"x")
        local.save(key, b"x")
    whole = [o.key for o in storage.list("t/", 100)]
    paged: list[str] = []
    while page := storage.list("t/", 1, paged[-1] if paged else None):
        paged.append(page[0].key)
        assert len(paged) <= len(keys), paged  # a cursor that jumped backwards would loop forever
    assert paged == whole and sorted(paged) == sorted(keys)
    assert sorted(whole) == [o.key for o in local.list("t/", 100)]


def test_presigned_url_serves_the_bytes_and_refuses_tampering(storage: S3Storage, seaweed: SeaweedServer) -> None:
    data = png_bytes((7, 7))
    storage.save("tenants/acme/pub/a b.png", data)
    url = storage.public_url("tenants/acme/pub/a b.png")
    assert url is not None and url.startswith(seaweed.endpoint + "/") and "X-Amz-Signature=" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == data
    head, signature = url.split("X-Amz-Signature=")
    tampered = head + "X-Amz-Signature=" + signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert httpx.get(tampered).status_code == 403


def test_public_base_url_is_used_verbatim(s3_settings: dict[str, Any]) -> None:
    settings = StorageSettings(**{**s3_settings, "s3_public_base_url": "https://cdn.example.com/media/"})
    storage = S3Storage(settings)
    assert storage.public_url("tenants/acme/a b/ü.png") == "https://cdn.example.com/media/tenants/acme/a%20b/%C3%BC.png"


@pytest.mark.parametrize(
    ("field", "code"), [("s3_access_key_id", "InvalidAccessKeyId"), ("s3_secret_access_key", "SignatureDoesNotMatch")]
)
def test_wrong_credentials_fail_on_the_first_call(s3_settings: dict[str, Any], field: str, code: str) -> None:
    settings = StorageSettings(**{**s3_settings, field: "wrong-" + s3_settings[field], "s3_create_bucket": False})
    storage = S3Storage(settings)
    with pytest.raises(ClientError) as caught:
        storage.save("a.png", b"x")
    assert caught.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError):
        S3Storage(settings.model_copy(update={"s3_create_bucket": True}))


def test_unreachable_server_is_service_unavailable(s3_settings: dict[str, Any]) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    storage = S3Storage(StorageSettings(**{**s3_settings, "s3_endpoint_url": dead, "s3_create_bucket": False}))
    # The backend's own client retries 5 times with backoff; one attempt is enough to see the mapping.
    storage.client = boto3.session.Session().client(
        "s3",
        endpoint_url=dead,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(ServiceUnavailableError):
        storage.stat("a.png")
    with pytest.raises(ServiceUnavailableError):
        storage.save("a.png", b"x")


@pytest.mark.parametrize("key", ["../x.png", "a/../../x.png", "/abs.png", "a/.."])
def test_escaping_keys_are_refused(storage: S3Storage, key: str) -> None:
    for call in (
        lambda: storage.save(key, b"x"),
        lambda: storage.read(key),
        lambda: storage.stream(key),
        lambda: storage.stat(key),
        lambda: storage.delete(key),
        lambda: storage.delete_prefix(key),
        lambda: storage.list(key, 10),
        lambda: storage.public_url(key),
    ):
        with pytest.raises(InvalidInputError):
            call()


# --- API and worker -----------------------------------------------------------------------------------------------


def upload(api: Api, path: str, data: bytes, tenant: str = "acme") -> httpx.Response:
    """POST a multipart upload."""
    response: httpx.Response = api.client.post(
        URL + path, files={"file": ("f.png", data, "image/png")}, headers=api.headers(tenant)
    )
    return response


def test_api_upload_head_list_get_delete(app_factory: AppFactory, s3_settings: dict[str, Any], s3: S3Client) -> None:
    api = app_factory(worker=True, storage=s3_settings)
    bucket = s3_settings["s3_bucket"]
    data = png_bytes((12, 9))
    saved = upload(api, "products/shoe.png", data)
    assert saved.status_code == 200, saved.text
    assert saved.json()["path"] == "products/shoe.png" and saved.json()["size"] == len(data)
    assert bucket_keys(s3, bucket) == ["tenants/acme/products/shoe.png"]
    head = api.client.head(URL + "products/shoe.png", headers=api.headers())
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.headers["content-type"] == "image/png"
    listed = api.client.get(URL.rstrip("/") + "?prefix=products/", headers=api.headers()).json()
    assert [i["path"] for i in listed["items"]] == ["products/shoe.png"]
    got = api.client.get(URL + "products/shoe.png", headers=api.headers(), follow_redirects=False)
    assert got.status_code == 307
    direct = httpx.get(got.headers["location"])  # no Authorization: the presigned URL is the credential
    assert direct.status_code == 200 and direct.content == data
    deleted = api.client.delete(URL + "products/shoe.png", headers=api.headers())
    assert deleted.json() == {"path": "products/shoe.png", "deleted": True}
    assert bucket_keys(s3, bucket) == []
    assert api.client.head(URL + "products/shoe.png", headers=api.headers()).status_code == 404
    assert api.client.get(URL + "products/shoe.png", headers=api.headers()).status_code == 404
    assert api.client.delete(URL + "products/shoe.png", headers=api.headers()).status_code == 404


def test_api_tenants_are_isolated(app_factory: AppFactory, s3_settings: dict[str, Any]) -> None:
    api = app_factory(worker=True, storage=s3_settings)
    assert upload(api, "secret.png", png_bytes()).status_code == 200
    other = api.headers("globex")
    assert api.client.get(URL + "secret.png", headers=other, follow_redirects=False).status_code == 404
    assert api.client.head(URL + "secret.png", headers=other).status_code == 404
    assert api.client.delete(URL + "secret.png", headers=other).status_code == 404
    assert api.client.get(URL.rstrip("/"), headers=other).json()["items"] == []
    assert api.client.get(URL + "secret.png", headers=api.headers(), follow_redirects=False).status_code == 307


def test_image_adjuster_task_keeps_input_and_result_in_s3(
    app_factory: AppFactory, s3_settings: dict[str, Any], s3: S3Client
) -> None:
    api = app_factory(worker=True, storage=s3_settings)
    bucket = s3_settings["s3_bucket"]
    task = api.wait(
        api.create({"task_type": "IMAGE_ADJUSTER", "input_image": data_url((40, 20)), "aspect_ratio": 1})["id"]
    )
    assert task["status"] == "COMPLETED", task["errors"]
    folder = f"tenants/acme/adjustments/{task['id']}/"
    keys = bucket_keys(s3, bucket, folder)
    assert f"{folder}result.png" in keys
    assert any(k.startswith(f"{folder}inputs/") for k in keys) and f"tenants/acme/{task['input_image_path']}" in keys
    result = api.client.get(URL + task["result_image_path"], headers=api.headers(), follow_redirects=False)
    assert result.status_code == 307
    assert Image.open(io.BytesIO(httpx.get(result.headers["location"]).content)).size == (40, 40)
    assert api.client.delete(f"/api/v1/tasks/{task['id']}", headers=api.headers()).status_code == 200
    assert bucket_keys(s3, bucket, folder) == []
