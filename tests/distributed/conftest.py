"""Fixtures for the distributed deployment tests (PostgreSQL + Redis or RabbitMQ + worker processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from atelier.providers.registry import ALL_QUEUES
from tests.distributed.cluster import Cluster
from tests.distributed.services import postgres_database, rabbit_prefix, redis_prefix

pytestmark = pytest.mark.integration

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test."""
    with postgres_database() as url:
        yield url


def _clusters(tmp_path: Path, pg_url: str, broker: AbstractContextManager[tuple[str, str]]) -> Iterator[ClusterFactory]:
    clusters: list[Cluster] = []
    with broker as (url, prefix):

        def make(**overrides: Any) -> Cluster:
            clusters.append(Cluster(tmp_path, pg_url, url, prefix, **overrides))
            return clusters[-1]

        yield make
        for cluster in clusters:
            cluster.close()


@pytest.fixture
def redis_cluster(tmp_path: Path, pg_url: str) -> Iterator[ClusterFactory]:
    """Build a PostgreSQL + Redis cluster (workers are started by the test)."""
    yield from _clusters(tmp_path, pg_url, redis_prefix())


@pytest.fixture
def rabbit_cluster(tmp_path: Path, pg_url: str) -> Iterator[ClusterFactory]:
    """Build a PostgreSQL + RabbitMQ cluster."""
    yield from _clusters(tmp_path, pg_url, rabbit_prefix(list(ALL_QUEUES)))
