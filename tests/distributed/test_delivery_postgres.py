"""Delivery on PostgreSQL: the single-statement claim/completion flag the outbox; a 20-way idempotent race."""

from __future__ import annotations

from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tests.api.test_real_http import check_race, served
from tests.conftest import AppFactory, make_settings
from tests.delivery.conftest import FAST, SECRET
from tests.delivery.test_webhooks import GENERATE, LIFECYCLE, kinds
from tests.fakes.server import serve_fake
from tests.fakes.webhooks import Receiver, create_app

pytestmark = pytest.mark.integration


def test_webhooks_from_the_single_statement_paths(app_factory: AppFactory, pg_url: str) -> None:
    with serve_fake(Receiver(), create_app) as receiver:
        check_lifecycle(app_factory, pg_url, receiver)


def check_lifecycle(app_factory: AppFactory, pg_url: str, receiver: Receiver) -> None:
    webhooks = {"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST}
    api = app_factory(database={"url": pg_url}, webhooks=webhooks)
    task = api.create({**GENERATE, "webhook_url": receiver.url})
    assert api.wait(task["id"])["status"] == "COMPLETED"
    events = receiver.wait_for(4)
    assert kinds(events) == LIFECYCLE
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)


def test_twenty_concurrent_identical_creates_on_postgres(tmp_path: Path, pg_url: str) -> None:
    settings = make_settings(tmp_path / "data", database={"url": pg_url})
    for base, headers in served(settings):
        check_race(base, headers)
