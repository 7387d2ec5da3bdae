"""A local fake of Freepik's Magnific upscaler API (creative and precision), driven by a per-submit script.

Each submit that passes validation takes the next behaviour from ``FreepikFake.script`` (default ``"ok"``):

- ``ok``: CREATED at submit, IN_PROGRESS on the first status poll, COMPLETED with the image URL on the next;
- ``slow``: IN_PROGRESS until ``release()``;
- ``fail``: IN_PROGRESS, then FAILED;
- ``nsfw``: IN_PROGRESS, then FAILED with a moderation ``error`` message (Freepik documents no such field:
  this is the shape the provider's content-policy branch expects, not a documented one);
- ``429``: the submit is refused once with ``Retry-After: 1`` (the repeated submit takes the next behaviour);
- ``500``: the submit answers 500 once;
- ``invalid``: the submit answers 400 with Freepik's ``{"message", "invalid_params"}`` body;
- ``status500``: like ok, but the first status poll answers 503;
- ``malformed``: like ok, but the first status poll answers 200 with an HTML body.

Like the real service, requests are validated first (bare base64 image that decodes, ``scale_factor`` enum,
integer ranges, ``optimized_for``/``engine`` enums) and refused with 400 whatever the script says; every route
but the files needs ``x-freepik-api-key: <key>`` (401 otherwise). Outputs are real PNGs: the decoded input
resized (nearest neighbour) by the requested factor, or by ``PRECISION_SCALE`` for the precision upscaler,
whose v1 endpoint takes no factor. They are served at ``/files/<task_id>.png``.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from tests.fakes.scripted import ScriptedJobsFake

CREATIVE = "image-upscaler"
PRECISION = "image-upscaler-precision"
PRECISION_SCALE = 2
SCALE_FACTORS = {"2x": 2, "4x": 4, "8x": 8, "16x": 16}
OPTIMIZED_FOR = {
    "standard",
    "soft_portraits",
    "hard_portraits",
    "art_n_illustration",
    "videogame_assets",
    "nature_n_landscapes",
    "films_n_photography",
    "3d_renders",
    "science_fiction_n_horror",
}
ENGINES = {"automatic", "magnific_illusio", "magnific_sharpy", "magnific_sparkle"}
CREATIVE_RANGES = {"creativity": (-10, 10), "hdr": (-10, 10), "resemblance": (-10, 10), "fractality": (-10, 10)}
PRECISION_RANGES = {"sharpen": (0, 100), "smart_grain": (0, 100), "ultra_detail": (0, 100)}


@dataclass
class FreepikJob:
    """One accepted upscale task."""

    endpoint: str  # CREATIVE or PRECISION
    body: dict[str, Any]
    behaviour: str
    output: bytes
    polls: int = 0
    released: bool = False
    downloads: int = 0


@dataclass
class FreepikFake(ScriptedJobsFake):
    """State of the fake; tests read the counters."""

    key: str | None = "freepik-test-key"
    script: list[str] = field(default_factory=list)
    jobs: dict[str, FreepikJob] = field(default_factory=dict)
    submits: int = 0  # accepted submits (jobs created)
    submit_attempts: list[float] = field(default_factory=list)  # monotonic time of every POST that was authorised
    status_calls: int = 0
    unexpected: list[str] = field(default_factory=list)  # requests to routes the protocol does not have
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submits_to(self, endpoint: str) -> int:
        """Accepted submits to one endpoint."""
        return sum(1 for job in self.jobs.values() if job.endpoint == endpoint)


def upscale(data: bytes, factor: int) -> bytes:
    """What the fake "upscaler" returns: the input resized with nearest neighbour, as PNG."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGBA" if opened.mode in ("RGBA", "LA", "P") else "RGB")
    output = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    output.save(buffer, format="PNG")
    return buffer.getvalue()


def _invalid(params: list[dict[str, str]]) -> Response:
    return JSONResponse({"message": "Your request has invalid params", "invalid_params": params}, status_code=400)


def _decode_image(value: Any) -> tuple[bytes | None, str]:
    if not isinstance(value, str) or not value:
        return None, "Image is required"
    if value.startswith("data:"):
        return None, "Image must be a base64 string, not a data URL"
    try:
        data = base64.b64decode(value, validate=True)
        Image.open(io.BytesIO(data)).verify()
    except (binascii.Error, ValueError, OSError, SyntaxError):
        return None, "Image is not a valid base64 encoded image"
    return data, ""


def validate(endpoint: str, body: Any) -> tuple[bytes | None, int, list[dict[str, str]]]:
    """(decoded image, scale factor, invalid params) of a submit body, checked like Freepik does."""
    if not isinstance(body, dict):
        return None, 0, [{"field": "body", "reason": "Body must be a JSON object"}]
    problems: list[dict[str, str]] = []
    data, reason = _decode_image(body.get("image"))
    if data is None:
        problems.append({"field": "image", "reason": reason})
    factor = PRECISION_SCALE
    ranges = PRECISION_RANGES
    if endpoint == CREATIVE:
        ranges = CREATIVE_RANGES
        scale = body.get("scale_factor", "2x")
        factor = SCALE_FACTORS.get(scale, 0) if isinstance(scale, str) else 0
        if not factor:
            problems.append({"field": "scale_factor", "reason": f"{scale!r} is not one of {sorted(SCALE_FACTORS)}"})
        if body.get("optimized_for", "standard") not in OPTIMIZED_FOR:
            problems.append({"field": "optimized_for", "reason": "Unknown optimisation profile"})
        if body.get("engine", "automatic") not in ENGINES:
            problems.append({"field": "engine", "reason": "Unknown engine"})
        if "prompt" in body and not isinstance(body["prompt"], str):
            problems.append({"field": "prompt", "reason": "Prompt must be a string"})
    for name, (low, high) in ranges.items():
        value = body.get(name, 0 if low < 0 else 7)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            problems.append({"field": name, "reason": f"Must be an integer between {low} and {high}"})
    return data, factor, problems


def create_freepik_app(fake: FreepikFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()

    def authorised(request: Request) -> bool:
        return fake.key is None or request.headers.get("x-freepik-api-key") == fake.key

    def unauthorised() -> Response:
        return JSONResponse({"message": "Invalid API key"}, status_code=401)

    @app.get("/files/{name}")
    def file(name: str) -> Response:  # the CDN: no key needed, like Freepik's signed result URLs
        job = fake.jobs.get(name.removesuffix(".png"))
        if job is None:
            return Response(status_code=404)
        job.downloads += 1
        return Response(job.output, media_type="image/png")

    @app.post(f"/v1/ai/{CREATIVE}")
    async def submit_creative(request: Request) -> Response:
        return await submit(CREATIVE, request)

    @app.post(f"/v1/ai/{PRECISION}")
    async def submit_precision(request: Request) -> Response:
        return await submit(PRECISION, request)

    @app.get(f"/v1/ai/{CREATIVE}/{{task_id}}")
    def status_creative(task_id: str, request: Request) -> Response:
        return status(CREATIVE, task_id, request)

    @app.get(f"/v1/ai/{PRECISION}/{{task_id}}")
    def status_precision(task_id: str, request: Request) -> Response:
        return status(PRECISION, task_id, request)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def other(path: str, request: Request) -> Response:
        fake.unexpected.append(f"{request.method} /{path}")
        return JSONResponse({"message": "Not found"}, status_code=404)

    async def submit(endpoint: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        fake.submit_attempts.append(time.monotonic())
        try:
            body = await request.json()
        except ValueError:
            return _invalid([{"field": "body", "reason": "Body is not valid JSON"}])
        data, factor, problems = validate(endpoint, body)
        if problems or data is None:
            return _invalid(problems)
        behaviour = fake.next_behaviour()
        if behaviour == "429":
            return JSONResponse({"message": "Rate limit exceeded"}, status_code=429, headers={"Retry-After": "1"})
        if behaviour == "500":
            return JSONResponse({"message": "Internal Server Error"}, status_code=500)
        if behaviour == "invalid":
            return _invalid([{"field": "image", "reason": "Image resolution is too low"}])
        task_id = str(uuid.uuid4())
        fake.jobs[task_id] = FreepikJob(endpoint, body, behaviour, upscale(data, factor))
        fake.submits += 1
        return JSONResponse({"data": {"task_id": task_id, "status": "CREATED", "generated": []}})

    def status(endpoint: str, task_id: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        fake.status_calls += 1
        job = fake.jobs.get(task_id)
        if job is None or job.endpoint != endpoint:
            return JSONResponse({"message": "Not found"}, status_code=404)
        job.polls += 1
        data: dict[str, Any] = {"task_id": task_id, "status": "IN_PROGRESS", "generated": []}
        if job.behaviour == "status500" and job.polls == 1:
            return JSONResponse({"message": "Service Unavailable. Please try again later."}, status_code=503)
        if job.behaviour == "malformed" and job.polls == 1:
            return PlainTextResponse("<html>502 Bad Gateway</html>", status_code=200)
        if job.behaviour == "slow" and not job.released:
            return JSONResponse({"data": data})
        if job.polls == 1 and job.behaviour != "slow":
            return JSONResponse({"data": data})
        if job.behaviour == "fail":
            data["status"] = "FAILED"
        elif job.behaviour == "nsfw":
            data.update(status="FAILED", error="Image flagged by content moderation (NSFW)")
        else:
            data.update(status="COMPLETED", generated=[f"{fake.base_url}/files/{task_id}.png"])
        return JSONResponse({"data": data})

    return app
