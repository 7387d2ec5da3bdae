"""A local fake of fal's queue API (submit → status → result → cancel), driven by a per-submit script.

Each submit takes the next behaviour from ``FalFake.script`` (default ``"ok"``):

- ``ok``: IN_QUEUE on the first status poll, IN_PROGRESS on the next, then COMPLETED;
- ``slow``: IN_PROGRESS until ``release()`` or a cancel;
- ``fail``: COMPLETED with ``error`` (the result URL then answers 500);
- ``nsfw``: COMPLETED with a content-policy ``error_type``;
- ``429``: the submit is refused once with ``Retry-After: 1`` (the retry takes the next behaviour);
- ``500``: the submit answers 500 once;
- ``invalid``: the submit answers 422 with fal's validation ``detail`` list;
- ``status500``: like ok, but the first status poll answers 503;
- ``malformed``: the first status poll answers a non-JSON body.

Outputs are real PNGs (or an MP4-typed byte stream for video apps) rendered per request and served by
the fake at ``/files/…``; ``Authorization: Key <key>`` is required when ``key`` is set.
"""

from __future__ import annotations

import io
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from tests.fakes.scripted import ScriptedJobsFake


@dataclass
class FalJob:
    """One submitted request (``output``/``media_type`` once its result is rendered)."""

    app_id: str
    arguments: dict[str, Any]
    behaviour: str
    polls: int = 0
    cancelled: bool = False
    released: bool = False
    output: bytes = b""
    media_type: str = "image/png"


@dataclass
class FalFake(ScriptedJobsFake):
    """State of the fake; tests read the counters."""

    key: str | None = "fal-test-key"
    script: list[str] = field(default_factory=list)
    jobs: dict[str, FalJob] = field(default_factory=dict)
    submits: int = 0
    status_calls: int = 0
    cancels: int = 0
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    # Extension points (subclasses fake other apps on the same protocol) ---------------------------------

    def accept(self, job: FalJob, seed: int) -> Response | None:
        """Render the job's output at submit; a response refuses the submit instead (e.g. the app's 422)."""
        if "video" in job.app_id:
            job.output, job.media_type = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4"
            return None
        size = job.arguments.get("image_size") or {"width": 24, "height": 16}
        image = Image.new("RGB", (int(size["width"]), int(size["height"])), (200, 40, 40))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        job.output = buffer.getvalue()
        return None

    def result_body(self, job: FalJob, url: str) -> dict[str, Any]:
        """The app's output JSON for a completed job whose file is served at ``url``."""
        if "video" in job.app_id:
            return {"video": {"url": url, "content_type": "video/mp4"}}
        if job.app_id.startswith("json/"):
            return {"answer": 42, "echo": job.arguments}
        return {
            "images": [{"url": url, "content_type": job.media_type}],
            "seed": 1234,
            "prompt": job.arguments.get("prompt"),
        }


def create_fal_app(fake: FalFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return fake.key is None or request.headers.get("authorization") == f"Key {fake.key}"

    def root(app_id: str) -> str:
        return "/".join(app_id.split("/")[:2])

    @app.get("/files/{request_id}")
    def file(request_id: str) -> Response:
        job = fake.jobs.get(request_id)
        if job is None:
            return Response(status_code=404)
        return Response(job.output, media_type=job.media_type)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
    async def queue(path: str, request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "Invalid key"}, status_code=401)
        parts = path.strip("/").split("/")
        if request.method == "POST":
            return submit(path.strip("/"), await request.json())
        if len(parts) >= 4 and parts[2] == "requests":
            request_id = parts[3]
            job = fake.jobs.get(request_id)
            if job is None:
                return JSONResponse({"detail": "Request not found"}, status_code=404)
            tail = parts[4] if len(parts) > 4 else ""
            if request.method == "PUT" and tail == "cancel":
                fake.cancels += 1
                job.cancelled = True
                return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
            if tail == "status":
                return status(request_id, job)
            if tail == "":
                return result(request_id, job)
        return JSONResponse({"detail": "Not found"}, status_code=404)

    def submit(app_id: str, arguments: dict[str, Any]) -> Response:
        behaviour = fake.next_behaviour()
        if behaviour == "429":
            return JSONResponse({"detail": "Too many requests"}, status_code=429, headers={"Retry-After": "1"})
        if behaviour == "500":
            return JSONResponse({"detail": "Internal error"}, status_code=500)
        if behaviour == "invalid":
            detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]
            return JSONResponse({"detail": detail}, status_code=422)
        job = FalJob(app_id, arguments, behaviour)
        with fake.lock:
            seed = fake.submits + 1
        refused = fake.accept(job, seed)
        if refused is not None:
            return refused
        request_id = str(uuid.uuid4())
        with fake.lock:
            fake.submits += 1
            fake.jobs[request_id] = job
        base = f"{fake.base_url}/{root(app_id)}/requests/{request_id}"
        return JSONResponse(
            {
                "request_id": request_id,
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }
        )

    def status(request_id: str, job: FalJob) -> Response:
        with fake.lock:
            fake.status_calls += 1
        job.polls += 1
        if job.behaviour == "status500" and job.polls == 1:
            return JSONResponse({"detail": "upstream unavailable"}, status_code=503)
        if job.behaviour == "malformed" and job.polls == 1:
            return PlainTextResponse("<html>bad gateway</html>", status_code=200)
        if job.behaviour == "slow" and not (job.released or job.cancelled):
            return JSONResponse({"status": "IN_PROGRESS", "logs": []}, status_code=202)
        if job.polls == 1 and job.behaviour != "slow":
            return JSONResponse({"status": "IN_QUEUE", "queue_position": 1}, status_code=202)
        if job.polls == 2 and job.behaviour != "slow":
            return JSONResponse({"status": "IN_PROGRESS", "logs": [{"message": "step 1"}]}, status_code=202)
        body: dict[str, Any] = {"status": "COMPLETED", "logs": [], "response_url": f"/requests/{request_id}"}
        if job.behaviour == "fail":
            body.update(error="CUDA out of memory", error_type="runtime_error")
        if job.behaviour == "nsfw":
            body.update(error="Image flagged", error_type="content_policy_violation")
        return JSONResponse(body)

    def result(request_id: str, job: FalJob) -> Response:
        if job.behaviour in ("fail", "nsfw"):
            return JSONResponse({"detail": "Request failed"}, status_code=500)
        return JSONResponse(fake.result_body(job, f"{fake.base_url}/files/{request_id}"))

    return app
