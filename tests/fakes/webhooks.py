"""A webhook receiver: records every request, answers from a script, dedupes on ``webhook-id`` like a real one."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Received:
    """One request as it arrived."""

    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        """The JSON body."""
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with ``fail_status`` (then 2xx); ``always`` overrides every answer."""

    fail_first: int = 0
    fail_status: int = 500
    always: int | None = None
    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    accepted: dict[str, Received] = field(default_factory=dict)  # webhook-id → first accepted request
    duplicates: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Where to point ``webhook_url``."""
        return f"{self.base_url}/hook"

    def events(self) -> list[dict[str, Any]]:
        """Accepted events, deduplicated, in arrival order."""
        with self.lock:
            return [r.event for r in self.accepted.values()]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until ``count`` distinct events were accepted."""
        deadline = time.monotonic() + timeout
        while len(self.events()) < count:
            assert time.monotonic() < deadline, f"only {len(self.events())} of {count} events: {self.events()}"
            time.sleep(0.02)
        return self.events()

    async def hook(self, request: Request) -> Response:
        """The receiving endpoint."""
        received = Received({k.lower(): v for k, v in request.headers.items()}, await request.body())
        with self.lock:
            self.requests.append(received)
            answer = self.always
            if answer is None:
                answer = self.fail_status if len(self.requests) <= self.fail_first else 204
            if 200 <= answer < 300:
                msg_id = received.headers["webhook-id"]
                if msg_id in self.accepted:
                    self.duplicates += 1
                else:
                    self.accepted[msg_id] = received
        return Response(status_code=answer, content=b"" if answer == 204 else b"nope")


def create_app(receiver: Receiver) -> Starlette:
    """The receiver as an ASGI app."""
    return Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
