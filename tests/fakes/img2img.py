"""A local fake of an image-to-image app on fal's queue API whose output really derives from its input.

Same URL shapes as :mod:`tests.fakes.fal`: submit ``POST /{app_id}``, status ``GET /{owner}/{alias}/requests/
{id}/status``, result ``GET /{owner}/{alias}/requests/{id}``, cancel ``PUT …/cancel``, files ``GET /files/{id}``;
``Authorization: Key <key>`` is required when ``key`` is set.

The submit's ``image_url`` (a data URL) is decoded and the output is rendered at once:

- ``ok``: the input, mildly changed — an unsharp mask (radius 2, 40 %) and every level raised by 3 — so that
  SSIM against the input stays high (> 0.9 on natural-looking images) while the pixels do differ;
- ``strong``: like ok with a much stronger unsharp mask (250 %): a region the app "refined" differently from its
  neighbours, which is what a seam between tiles looks like when the tiles are pasted instead of blended;
- ``double``: like ok, returned at twice the size (apps that snap or upscale sizes: the caller resizes back);
- ``drift``: seeded uniform noise of the input's size (SSIM ≈ 0: a quality gate rejects it);
- ``fail``: the job completes with an ``error`` (the result URL then answers 500);
- ``slow``: IN_PROGRESS until ``release()`` or a cancel;
- ``429``: the submit is refused once with ``Retry-After: 1`` (the retry takes the next behaviour);
- ``500``: the submit answers 500 once.

Each submit takes the next behaviour from ``script`` (default ``ok``). Counters: ``submits`` (accepted jobs),
``sizes`` (``(width, height)`` of every image received, in submit order), ``status_calls``, ``cancels``.
"""

from __future__ import annotations

import base64
import io
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageFilter


@dataclass
class Img2ImgJob:
    """One accepted request."""

    app_id: str
    arguments: dict[str, Any]
    behaviour: str
    output: bytes = b""
    polls: int = 0
    cancelled: bool = False
    released: bool = False


@dataclass
class Img2ImgFake:
    """State of the fake; tests read the counters."""

    key: str | None = "fal-test-key"
    script: list[str] = field(default_factory=list)
    jobs: dict[str, Img2ImgJob] = field(default_factory=dict)
    submits: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    status_calls: int = 0
    cancels: int = 0
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        """Let every ``slow`` job finish."""
        for job in self.jobs.values():
            job.released = True

    def next_behaviour(self) -> str:
        """Pop the script's next behaviour (``ok`` once it is empty)."""
        with self.lock:
            return self.script.pop(0) if self.script else "ok"

    def arguments(self) -> list[dict[str, Any]]:
        """The arguments of every accepted job, in submit order, without the (large) image."""
        return [{k: v for k, v in job.arguments.items() if k != "image_url"} for job in self.jobs.values()]


def decode_image(data_url: str) -> Image.Image:
    """The image inside a ``data:image/…;base64,…`` URL."""
    header, _, body = data_url.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError("image_url must be a base64 image data URL")
    image = Image.open(io.BytesIO(base64.b64decode(body)))
    image.load()
    return image.convert("RGB")


def refine(image: Image.Image, percent: int = 40) -> Image.Image:
    """The fake's "refinement": sharpening (mild by default) and a small brightness lift."""
    sharpened = image.filter(ImageFilter.UnsharpMask(radius=2, percent=percent, threshold=0))
    lifted = np.clip(np.asarray(sharpened, dtype=np.int16) + 3, 0, 255).astype(np.uint8)
    return Image.fromarray(lifted)


def _render(image: Image.Image, behaviour: str, seed: int) -> bytes:
    if behaviour == "drift":
        noise = np.random.default_rng(seed).integers(0, 256, (image.height, image.width, 3), dtype=np.uint8)
        out = Image.fromarray(noise)
    else:
        out = refine(image, 250 if behaviour == "strong" else 40)
        if behaviour == "double":
            out = out.resize((image.width * 2, image.height * 2), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


def create_img2img_app(fake: Img2ImgFake) -> FastAPI:
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
        return Response(job.output, media_type="image/png")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
    async def queue(path: str, request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"detail": "Invalid key"}, status_code=401)
        parts = path.strip("/").split("/")
        if request.method == "POST":
            return submit(path.strip("/"), await request.json())
        if len(parts) >= 4 and parts[2] == "requests":
            job = fake.jobs.get(parts[3])
            if job is None:
                return JSONResponse({"detail": "Request not found"}, status_code=404)
            tail = parts[4] if len(parts) > 4 else ""
            if request.method == "PUT" and tail == "cancel":
                fake.cancels += 1
                job.cancelled = True
                return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
            if tail == "status":
                return status(parts[3], job)
            if tail == "":
                return result(parts[3], job)
        return JSONResponse({"detail": "Not found"}, status_code=404)

    def submit(app_id: str, arguments: dict[str, Any]) -> Response:
        behaviour = fake.next_behaviour()
        if behaviour == "429":
            return JSONResponse({"detail": "Too many requests"}, status_code=429, headers={"Retry-After": "1"})
        if behaviour == "500":
            return JSONResponse({"detail": "Internal error"}, status_code=500)
        try:
            image = decode_image(str(arguments.get("image_url", "")))
        except Exception as exc:  # fal validates its input: a 422 with a detail list
            detail = [{"loc": ["body", "image_url"], "msg": str(exc), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        request_id = str(uuid.uuid4())
        with fake.lock:
            fake.submits += 1
            seed = fake.submits
            fake.sizes.append(image.size)
            job = Img2ImgJob(app_id, arguments, behaviour)
            fake.jobs[request_id] = job
        job.output = _render(image, behaviour, seed)
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

    def status(request_id: str, job: Img2ImgJob) -> Response:
        with fake.lock:
            fake.status_calls += 1
        job.polls += 1
        if job.behaviour == "slow" and not (job.released or job.cancelled):
            return JSONResponse({"status": "IN_PROGRESS", "logs": []}, status_code=202)
        if job.polls == 1 and job.behaviour != "slow":
            return JSONResponse({"status": "IN_QUEUE", "queue_position": 1}, status_code=202)
        body: dict[str, Any] = {"status": "COMPLETED", "logs": [], "response_url": f"/requests/{request_id}"}
        if job.behaviour == "fail":
            body.update(error="CUDA out of memory", error_type="runtime_error")
        return JSONResponse(body)

    def result(request_id: str, job: Img2ImgJob) -> Response:
        if job.behaviour == "fail":
            return JSONResponse({"detail": "Request failed"}, status_code=500)
        url = f"{fake.base_url}/files/{request_id}"
        return JSONResponse({"images": [{"url": url, "content_type": "image/png"}], "seed": 42})

    return app
