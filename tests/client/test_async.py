"""The async SDK: in-process through ``httpx.ASGITransport`` and over a real socket."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from atelier.client import AsyncClient, NotFound, TimeoutError, WaitProgress
from atelier.core.auth import Role, mint_token
from tests.client.conftest import OK, PROGRESSING, Live
from tests.conftest import Api


def test_async_client_in_process(api: Api) -> None:
    # Its own app: an app that served TestClient requests has loop-bound state of the TestClient's event loop.
    token = mint_token(api.settings.auth, tenant="acme", role=Role.SERVICE)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=api.client.app)
        async with AsyncClient("http://testserver", token, transport=transport) as client:
            ids = [(await client.tasks.create("GENERATION", **OK)).id for _ in range(5)]
            listed = [task.id async for task in client.tasks.iter(page_size=2)]
            assert listed == list(reversed(ids))
            assert [t.id for t in await client.tasks.list_all(page_size=3)] == listed
            done = await client.tasks.wait(ids[0], timeout=30)
            assert done.status == "COMPLETED" and done.result_image_path
            events = [event async for event in client.tasks.events(ids[0])]
            assert events[0].event_type == "TASK_CREATED" and events[-1].status == "COMPLETED"
            with pytest.raises(NotFound):
                await client.tasks.get("00000000-0000-4000-8000-000000000000")

    asyncio.run(scenario())


def test_async_wait_streams_over_a_socket(live: Live) -> None:
    reports: list[WaitProgress] = []

    async def scenario() -> None:
        async with AsyncClient(live.url, live.token()) as client:
            task = await client.tasks.create("GENERATION", **PROGRESSING)
            done = await client.tasks.wait(task.id, timeout=30, on_progress=reports.append)
            assert done.status == "COMPLETED"
            slow = await client.tasks.create("GENERATION", prompt="x", config={"script": ["slow"], "slow_seconds": 20})
            with pytest.raises(TimeoutError):
                await client.tasks.wait(slow.id, timeout=0.4)
            assert (await client.tasks.cancel(slow.id)).id == slow.id
            polled = await client.tasks.wait(slow.id, timeout=30, use_sse=False, poll_interval=0.1)
            assert polled.status == "CANCELLED"

    asyncio.run(scenario())
    assert any(r.progress == 50.0 for r in reports)  # the provider's progress, read or streamed
    last = reports[-1].event
    assert last is not None and last.event_type == "TASK_STATUS" and last.status == "COMPLETED" and last.id  # streamed
