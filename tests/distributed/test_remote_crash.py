"""A remote job outlives a killed worker: the next worker polls it, nothing is submitted (or paid) twice."""

from __future__ import annotations

import pytest

from tests.distributed.conftest import ClusterFactory
from tests.fakes.fal import FalFake, create_fal_app
from tests.fakes.server import serve_fake
from tests.providers.conftest import FAL_KEY, service, task_row, until

pytestmark = pytest.mark.integration


def test_worker_killed_mid_poll_resumes_the_same_fal_request(redis_cluster: ClusterFactory) -> None:
    with serve_fake(FalFake(key=FAL_KEY, script=["slow"]), create_fal_app) as fake:
        cluster = redis_cluster(
            providers={"plugins": [], "fal": service(fake.base_url, FAL_KEY)},
            inputs={"allow_private_networks": ["127.0.0.1"]},
        )
        cluster.start_worker(concurrency=1)
        api = cluster.client()
        task_id = api.create({"task_type": "GENERATION", "prompt": "a coat", "width": 32, "height": 32})["id"]
        until(lambda: task_row(api, task_id).service_task_id is not None, timeout=60, what="fal request saved")
        until(lambda: fake.status_calls > 0, what="worker polling")
        cluster.kill_worker(0)  # kill -9 while the worker waits on fal

        cluster.start_worker(concurrency=1)
        fake.release()
        done = api.wait(task_id, timeout=60)
        assert done["status"] == "COMPLETED", done["errors"]
        assert done["is_resumed"] is True and done["resume_attempt_count"] == 1
        assert fake.submits == 1
        assert done["fal_request_id"] == next(iter(fake.jobs))
        assert done["result_image_path"].startswith(f"generations/{task_id}/")
