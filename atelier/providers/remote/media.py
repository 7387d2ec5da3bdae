"""Moving images between our storage and remote services: inline payloads out, downloaded results in.

Inputs are always sent inline (base64 / data URLs): the remote service never needs to reach our storage,
which is usually private. Results are always downloaded into the task's folder: a task never depends on a
provider's expiring URL.
"""

from __future__ import annotations

import base64
import io
import mimetypes
from dataclasses import dataclass

from PIL import Image

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits, fetch_url, open_image, probe_image
from atelier.providers.base import ProviderContext, ProviderFatalError
from atelier.providers.local.provider import encode_image

MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXT_BY_MIME = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
VIDEO_EXT_BY_MIME = {"video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov"}


@dataclass(frozen=True)
class Payload:
    """An encoded image ready to send."""

    data: bytes
    mime: str

    @property
    def base64(self) -> str:
        """The bytes as standard base64."""
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_uri(self) -> str:
        """``data:<mime>;base64,<…>``."""
        return f"data:{self.mime};base64,{self.base64}"


def _limits(ctx: ProviderContext) -> FetchLimits:
    return ctx.fetch_limits or FetchLimits()


def read_source(ctx: ProviderContext, source: str, field: str) -> bytes:
    """The bytes of an input: fetched (SSRF-guarded) when it is a URL, else read from the tenant's storage."""
    if source.lower().startswith(("http://", "https://")):
        return fetch_url(source, limits=_limits(ctx), client=ctx.http, loc=("task_data", field))
    return ctx.storage.read(source)


def image_payload(ctx: ProviderContext, source: str, field: str, *, max_height: int | None = None) -> Payload:
    """An input image as sent to a service; PNG/JPEG/WEBP pass through, others (or too tall) are re-encoded."""
    data = read_source(ctx, source, field)
    fmt, _width, height = probe_image(data, limits=_limits(ctx), loc=("task_data", field))
    if fmt in MIME_BY_FORMAT and fmt != "GIF" and (max_height is None or height <= max_height):
        return Payload(data, MIME_BY_FORMAT[fmt])
    image = open_image(data, limits=_limits(ctx), loc=("task_data", field))
    if max_height is not None and image.height > max_height:
        width = max(1, round(image.width * max_height / image.height))
        image = image.resize((width, max_height), Image.Resampling.LANCZOS)
    encoded, _ext, mime = encode_image(image, fmt)
    return Payload(encoded, mime)


def decode_data_uri(value: str) -> Payload:
    """Split a ``data:`` URI (as some services return) into bytes and mime."""
    header, _, body = value.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise ProviderFatalError("service returned a data URI that is not base64")
    return Payload(base64.b64decode(body, validate=False), header[5:].split(";")[0] or "application/octet-stream")


def store_result_image(ctx: ProviderContext, data: bytes, stem: str = "result") -> tuple[str, Image.Image]:
    """Check downloaded bytes are a bounded, decodable image, then save them as they are; return (path, image)."""
    try:
        image = open_image(data, limits=_limits(ctx), loc=("result",))
    except InvalidInputError as exc:  # the service's output is broken, not the user's input
        raise ProviderFatalError(f"service returned an unusable image: {exc}") from exc
    fmt = (Image.open(io.BytesIO(data)).format or "").upper()
    mime = MIME_BY_FORMAT.get(fmt)
    if mime is None:  # an unusual format: store it as PNG
        data, ext, mime = encode_image(image, None)
    else:
        ext = EXT_BY_MIME[mime]
    return ctx.storage.save(ctx.output_path(f"{stem}.{ext}"), data, mime).path, image


def store_result_video(
    ctx: ProviderContext, data: bytes, content_type: str | None, url: str, stem: str = "result"
) -> str:
    """Save a downloaded video under the task's folder with an extension from its type or URL."""
    if not data:
        raise ProviderFatalError("service returned an empty video")
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in VIDEO_EXT_BY_MIME:
        guessed, _ = mimetypes.guess_type(url.split("?")[0])
        mime = guessed if guessed in VIDEO_EXT_BY_MIME else "video/mp4"
    return ctx.storage.save(ctx.output_path(f"{stem}.{VIDEO_EXT_BY_MIME[mime]}"), data, mime).path
