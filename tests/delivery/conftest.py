"""Webhook receivers on real ports and apps that may deliver to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import pytest

from tests.conftest import Api, AppFactory
from tests.fakes.server import serve_fake
from tests.fakes.webhooks import Receiver, create_app

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # any base64 key
FAST = {"backoff_base_seconds": 0.05, "backoff_max_seconds": 0.2, "poll_interval_seconds": 0.02}

ReceiverFactory = Callable[..., Receiver]
WebhookApp = Callable[..., Api]


@pytest.fixture
def receiver_factory() -> Iterator[ReceiverFactory]:
    """Start receivers (``Receiver`` keyword arguments; ``port`` to pick one); all stop at the end of the test."""
    with ExitStack() as stack:

        def start(port: int | None = None, **kwargs: Any) -> Receiver:
            cm: AbstractContextManager[Receiver] = serve_fake(Receiver(**kwargs), create_app, port=port)
            return stack.enter_context(cm)

        yield start


@pytest.fixture
def receiver(receiver_factory: ReceiverFactory) -> Receiver:
    """A receiver that accepts everything."""
    return receiver_factory()


@pytest.fixture
def webhook_app(app_factory: AppFactory) -> WebhookApp:
    """An embedded app whose webhooks may reach 127.0.0.1, with fast retries (``webhooks`` keys override)."""

    def start(**webhooks: Any) -> Api:
        settings = {"allow_private_networks": ["127.0.0.1"], "secrets": [SECRET], **FAST, **webhooks}
        return app_factory(webhooks=settings)

    return start
