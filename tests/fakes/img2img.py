"""A local fake of an image-to-image app on fal's queue API whose output really derives from its input.

The fal fake (:mod:`tests.fakes.fal`) with another app behind it — same protocol and URL shapes: submit
``POST /{app_id}``, status ``GET /{owner}/{alias}/requests/{id}/status``, result ``GET /{owner}/{alias}/requests/
{id}``, cancel ``PUT …/cancel``, files ``GET /files/{id}``; ``Authorization: Key <key>`` is required when ``key`` is
set.

The submit's ``image_url`` (a data URL) is decoded and the output is rendered at once:

- ``ok``: the input, mildly changed — an unsharp mask (radius 2, 40 %) and every level raised by 3 — so that
  SSIM against the input stays high (> 0.9 on natural-looking images) while the pixels do differ;
- ``strong``: like ok with a much stronger unsharp mask (250 %): a region the app "refined" differently from its
  neighbours, which is what a seam between tiles looks like when the tiles are pasted instead of blended;
- ``double``: like ok, returned at twice the size (apps that snap or upscale sizes: the caller resizes back);
- ``drift``: seeded uniform noise of the input's size (SSIM ≈ 0: a quality gate rejects it);
- and the fal fake's own: ``fail`` (the job completes with an ``error``), ``slow`` (IN_PROGRESS until
  ``release()`` or a cancel), ``429`` and ``500`` on submit.

Each submit takes the next behaviour from ``script`` (default ``ok``). Counters: ``submits`` (accepted jobs),
``sizes`` (``(width, height)`` of every image received, in submit order), ``status_calls``, ``cancels``.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageFilter

from tests.fakes.fal import FalFake, FalJob, create_fal_app


@dataclass
class Img2ImgFake(FalFake):
    """An image-to-image app on the fal fake's protocol; ``sizes`` records every image received."""

    sizes: list[tuple[int, int]] = field(default_factory=list)

    def accept(self, job: FalJob, seed: int) -> Response | None:
        """Decode the submitted image (fal answers 422 when it is unusable) and render the output now."""
        try:
            image = decode_image(str(job.arguments.get("image_url", "")))
        except Exception as exc:  # fal validates its input: a 422 with a detail list
            detail = [{"loc": ["body", "image_url"], "msg": str(exc), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        with self.lock:
            self.sizes.append(image.size)
        job.output = _render(image, job.behaviour, seed)
        return None

    def result_body(self, job: FalJob, url: str) -> dict[str, Any]:
        """One output image."""
        return {"images": [{"url": url, "content_type": "image/png"}], "seed": 42}

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
    """The fake's ASGI app: fal's queue protocol (see :mod:`tests.fakes.fal`) serving this app's outputs."""
    return create_fal_app(fake)
