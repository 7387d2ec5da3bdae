"""A local fake of FASHN's API v1 (run → status → cancel), driven by a per-submit script.

Each submit takes the next behaviour from ``FashnFake.script`` (default ``"ok"``):

- ``ok``: ``completed`` on the first status poll;
- ``twostep``: ``processing`` on the first status poll, ``completed`` on the next;
- ``slow``: ``processing`` until ``release()`` (then ``completed``) or a cancel (then ``canceled``);
- ``fail``: ``failed`` with a ``PipelineError``;
- ``moderation``: ``failed`` with a ``ContentModerationError``;
- ``pose``: ``failed`` with a ``PoseError`` (the inputs are unusable);
- ``429``: the submit is refused once with ``RateLimitExceeded`` and ``Retry-After: 1`` (the retry takes the
  next behaviour);
- ``500``: the submit answers 500 ``InternalServerError`` once;
- ``invalid``: the submit answers 400 ``BadRequest``;
- ``status500``: like ok, but the first status poll answers 503;
- ``malformed``: like ok, but the first status poll answers a non-JSON body.

The output is a real PNG rendered per prediction: the size of the ``model_image`` received, filled with the
colour of the ``garment_image``'s top-left pixel, served by the fake at ``/files/<id>.png``.
``Authorization: Bearer <key>`` is required on the API routes when ``key`` is set.
"""

from __future__ import annotations

import base64
import io
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from tests.fakes.scripted import ScriptedJobsFake


def decode_image(value: str) -> Image.Image:
    """A data URL as sent by the provider, decoded."""
    header, _, body = value.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError("not a base64 image data URL")
    image = Image.open(io.BytesIO(base64.b64decode(body)))
    image.load()
    return image


@dataclass
class FashnJob:
    """One submitted prediction."""

    body: dict[str, Any]
    behaviour: str
    polls: int = 0
    cancelled: bool = False
    released: bool = False

    @property
    def inputs(self) -> dict[str, Any]:
        """The ``inputs`` object of the submit body."""
        inputs: dict[str, Any] = self.body.get("inputs") or {}
        return inputs


@dataclass
class FashnFake(ScriptedJobsFake):
    """State of the fake; tests read the counters."""

    key: str | None = "fashn-test-key"
    script: list[str] = field(default_factory=list)
    jobs: dict[str, FashnJob] = field(default_factory=dict)
    submits: int = 0
    submit_calls: int = 0
    status_calls: int = 0
    cancels: int = 0
    downloads: int = 0
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(name: str, message: str, status_code: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": name, "message": message}, status_code=status_code, headers=headers)


def _render(job: FashnJob) -> bytes:
    model = decode_image(job.inputs["model_image"])
    garment = decode_image(job.inputs["garment_image"]).convert("RGB")
    image = Image.new("RGB", model.size, garment.getpixel((0, 0)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FAILURES = {
    "fail": ("PipelineError", "Unexpected error in the try-on pipeline"),
    "moderation": ("ContentModerationError", "Prohibited content detected in the garment image"),
    "pose": ("PoseError", "Could not detect the body pose in the model image"),
}


def create_fashn_app(fake: FashnFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return fake.key is None or request.headers.get("authorization") == f"Bearer {fake.key}"

    @app.get("/files/{name}")
    def file(name: str) -> Response:
        job = fake.jobs.get(name.removesuffix(".png"))
        if job is None:
            return Response(status_code=404)
        fake.downloads += 1
        return Response(_render(job), media_type="image/png")

    @app.post("/v1/run")
    async def run(request: Request) -> Response:
        fake.submit_calls += 1
        if not authorised(request):
            return _error("UnauthorizedAccess", "Unauthorized: Invalid token", 401)
        body = await request.json()
        behaviour = fake.next_behaviour()
        if behaviour == "429":
            return _error("RateLimitExceeded", "Too many requests", 429, {"Retry-After": "1"})
        if behaviour == "500":
            return _error("InternalServerError", "Internal server error", 500)
        if behaviour == "invalid":
            return _error("BadRequest", "inputs.garment_image: unsupported image format", 400)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, dict) or body.get("model_name") != "tryon-v1.6":
            return _error("BadRequest", "model_name and inputs are required", 400)
        for name in ("model_image", "garment_image"):
            try:
                decode_image(str(inputs.get(name)))
            except Exception:
                return _error("BadRequest", f"inputs.{name} is not a base64 image", 400)
        fake.submits += 1
        prediction_id = f"{uuid.uuid4()}-u1"
        fake.jobs[prediction_id] = FashnJob(body, behaviour)
        return JSONResponse({"id": prediction_id, "error": None})

    @app.get("/v1/status/{prediction_id}")
    def status(prediction_id: str, request: Request) -> Response:
        if not authorised(request):
            return _error("UnauthorizedAccess", "Unauthorized: Invalid token", 401)
        job = fake.jobs.get(prediction_id)
        if job is None:
            return _error("NotFound", f"Prediction {prediction_id} is no longer tracked", 404)
        fake.status_calls += 1
        job.polls += 1
        body: dict[str, Any] = {"id": prediction_id, "status": "processing", "output": None, "error": None}
        if job.behaviour == "status500" and job.polls == 1:
            return _error("InternalServerError", "upstream unavailable", 503)
        if job.behaviour == "malformed" and job.polls == 1:
            return PlainTextResponse("<html>bad gateway</html>", status_code=200)
        if job.cancelled:
            body["status"] = "canceled"
        elif job.behaviour in FAILURES:
            name, message = FAILURES[job.behaviour]
            body.update(status="failed", error={"name": name, "message": message})
        elif (job.behaviour == "slow" and not job.released) or (job.behaviour == "twostep" and job.polls == 1):
            body["status"] = "processing"
        else:
            body.update(status="completed", output=[f"{fake.base_url}/files/{prediction_id}.png"])
        return JSONResponse(body)

    @app.post("/v1/cancel/{prediction_id}")
    def cancel(prediction_id: str, request: Request) -> Response:
        if not authorised(request):
            return _error("UnauthorizedAccess", "Unauthorized: Invalid token", 401)
        job = fake.jobs.get(prediction_id)
        if job is None:
            return _error("NotFound", f"Prediction {prediction_id} not found", 404)
        fake.cancels += 1
        job.cancelled = True
        return JSONResponse({"id": prediction_id, "status": "canceled"})

    return app
