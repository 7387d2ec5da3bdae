"""S3-compatible storage backend (AWS S3, Cloudflare R2, SeaweedFS, MinIO…) with the semantics of LocalStorage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from atelier.core.errors import AtelierError, InvalidInputError, NotFoundError, ServiceUnavailableError
from atelier.settings import StorageSettings
from atelier.storage.backend import CHUNK, ObjectInfo, guess_content_type

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

PAGE = 1000  # the most keys one ListObjectsV2 page returns and one DeleteObjects request accepts
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
# botocore's ConnectionError covers EndpointConnectionError, ConnectTimeoutError and proxy failures.
UNREACHABLE = (BotoConnectionError, ReadTimeoutError, ConnectionClosedError)


def is_missing(exc: ClientError) -> bool:
    """True when the error says the object or the bucket does not exist."""
    return exc.response.get("Error", {}).get("Code", "") in MISSING_CODES


@contextmanager
def reachable() -> Iterator[None]:
    """Turn network failures into ServiceUnavailableError; other errors pass through."""
    try:
        yield
    except UNREACHABLE as exc:
        raise ServiceUnavailableError(f"object storage unreachable: {exc}") from exc


def check_key(key: str) -> str:
    """Refuse absolute keys and ``..`` segments (TenantStorage validates too; this is defence in depth)."""
    if key.startswith("/") or ".." in key.split("/"):
        raise InvalidInputError(f"path escapes the storage root: {key!r}", loc=("path",))
    return key


class S3Storage:
    """Objects in one bucket of an S3-compatible server; keys are the backend keys unchanged."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        config = Config(
            s3={"addressing_style": settings.s3_addressing_style},
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        # One client for the process: boto3 clients are thread-safe, sessions are not.
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=config,
        )
        self.transfer = TransferConfig(
            multipart_threshold=settings.s3_multipart_threshold_bytes,
            multipart_chunksize=settings.s3_multipart_threshold_bytes,
            max_concurrency=4,
            use_threads=True,
        )
        if settings.s3_create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        with reachable():
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if not is_missing(exc):
                    raise
            region = self.settings.s3_region
            try:
                if region and region != "us-east-1":  # AWS refuses an explicit us-east-1 constraint
                    location = cast("BucketLocationConstraintType", region)
                    self.client.create_bucket(
                        Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": location}
                    )
                else:
                    self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                # Another process may have created it between our HEAD and CREATE.
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise

    def save(self, key: str, data: bytes | BinaryIO, content_type: str | None = None) -> ObjectInfo:
        """PUT bytes; streams go through the transfer manager (multipart above the threshold, never read whole)."""
        content_type = content_type or guess_content_type(check_key(key))
        with reachable():
            if isinstance(data, bytes):
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
            else:
                extra = {"ContentType": content_type}
                self.client.upload_fileobj(data, self.bucket, key, ExtraArgs=extra, Config=self.transfer)
        info = self.stat(key)
        if info is None:
            raise AtelierError(f"object {key} is missing right after it was written")
        return info

    def _body(self, key: str) -> StreamingBody:
        with reachable():
            try:
                return self.client.get_object(Bucket=self.bucket, Key=check_key(key))["Body"]
            except ClientError as exc:
                if is_missing(exc):
                    raise NotFoundError(f"no such object: {key}") from exc
                raise

    def read(self, key: str) -> bytes:
        """Whole object."""
        body = self._body(key)
        with reachable(), body:
            return body.read()

    def stream(self, key: str) -> Iterator[bytes]:
        """Chunks of the object (the GET happens here, so a missing key raises before the first chunk)."""
        body = self._body(key)

        def chunks() -> Iterator[bytes]:
            with reachable(), body:
                yield from body.iter_chunks(CHUNK)

        return chunks()

    def stat(self, key: str) -> ObjectInfo | None:
        """HEAD the object."""
        with reachable():
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=check_key(key))
            except ClientError as exc:
                if is_missing(exc):
                    return None
                raise
        content_type = head.get("ContentType") or guess_content_type(key)
        return ObjectInfo(key, head["ContentLength"], content_type, head["LastModified"])

    def delete(self, key: str) -> bool:
        """Delete one object; HEAD first because S3's DELETE succeeds on missing keys too."""
        if self.stat(key) is None:
            return False
        with reachable():
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every object under ``prefix/`` (never the whole bucket); return the deleted keys."""
        folder = prefix.rstrip("/")
        if not folder:
            return []
        check_key(folder)
        keys = sorted(info.key for info in self._iter_objects(folder + "/"))
        for start in range(0, len(keys), PAGE):
            self._delete_batch(keys[start : start + PAGE])
        return keys

    def _delete_batch(self, keys: list[str]) -> None:
        with reachable():
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        if errors := response.get("Errors"):
            first = errors[0]
            raise AtelierError(
                f"could not delete {len(errors)} objects, e.g. {first.get('Key')}: {first.get('Code')} "
                f"{first.get('Message')}"
            )

    def list(self, prefix: str, limit: int, start_after: str | None = None) -> list[ObjectInfo]:
        """Objects under ``prefix`` in key order (UTF-8 binary order, the same as LocalStorage's for ASCII)."""
        if limit <= 0:
            return []
        objects = self._iter_objects(check_key(prefix), start_after, page_size=min(limit, PAGE))
        return list(islice(objects, limit))

    def _iter_objects(self, prefix: str, start_after: str | None = None, page_size: int = PAGE) -> Iterator[ObjectInfo]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
        if start_after:
            params["StartAfter"] = check_key(start_after)
        with reachable():
            for page in self.client.get_paginator("list_objects_v2").paginate(**params):
                for item in page.get("Contents", []):
                    # ListObjectsV2 carries no Content-Type; guess it as LocalStorage does instead of a HEAD per key.
                    key = item["Key"]
                    yield ObjectInfo(key, item["Size"], guess_content_type(key), item["LastModified"])

    def public_url(self, key: str) -> str | None:
        """The CDN/public URL when configured, else a presigned GET URL."""
        check_key(key)
        if base := self.settings.s3_public_base_url:
            return f"{base.rstrip('/')}/{quote(key)}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.settings.s3_presign_seconds
        )
