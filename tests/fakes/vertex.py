"""A local fake of Google's OAuth token endpoint and Vertex AI ``generateContent``, driven by a per-call script.

Token endpoint ``POST /token`` (form ``grant_type`` + ``assertion``): the assertion must be an RS256 JWT signed
by the test service account's key (checked with its public key), with header ``kid`` = the key id, ``iss`` = the
client email, ``aud`` = ``https://oauth2.googleapis.com/token`` (the key file's ``token_uri``), ``scope`` =
cloud-platform and a lifetime of at most an hour; it answers ``{"access_token", "expires_in", "token_type"}``
(``grants`` counts them) or Google's ``400 {"error": "invalid_grant", "error_description"}``.

``POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`` needs
``Authorization: Bearer <a granted token>``; the express-mode path ``/v1/publishers/google/models/{model}:…``
needs ``x-goog-api-key``. Bodies are validated like Vertex does (role, parts, inline images decodable,
``responseModalities``, ``aspectRatio``/``imageSize`` values) and recorded in ``requests``. Each call takes the
next behaviour from ``VertexFake.script`` (default ``"ok"``):

- ``ok``: an image derived from the first inline image (resized with Lanczos to the size ``imageSize`` and
  ``aspectRatio`` give, scaled down by ``sizes`` to keep tests fast), else a rendered ``RENDER_COLOUR`` image;
- ``drift``: an unrelated noise image of that size (fails an SSIM check);
- ``blocked``: ``promptFeedback.blockReason`` SAFETY and no candidates;
- ``unsafe``: a candidate with ``finishReason`` IMAGE_SAFETY and only a text part;
- ``noimage``: a candidate with text only and ``finishReason`` STOP;
- ``429``: ``RESOURCE_EXHAUSTED`` with ``Retry-After: <retry_after>``; ``500``: ``INTERNAL``;
- ``invalid``: 400 ``INVALID_ARGUMENT``; ``unauth``: every granted token is revoked and 401 ``UNAUTHENTICATED``;
- ``malformed``: a 200 HTML body.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from tests.fakes.scripted import ScriptedFake

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
ASPECT_RATIOS = {"1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}
RENDER_COLOUR = (30, 160, 90)
_PRIVATE_KEY: rsa.RSAPrivateKey | None = None
_KEY_LOCK = threading.Lock()


def service_account_private_key() -> rsa.RSAPrivateKey:
    """One RSA 2048 key per test process (generation takes a moment)."""
    global _PRIVATE_KEY
    with _KEY_LOCK:
        if _PRIVATE_KEY is None:
            _PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _PRIVATE_KEY


@dataclass(frozen=True)
class ServiceAccountKey:
    """A test service-account key written as Google's JSON key file."""

    path: Path
    client_email: str
    private_key_id: str
    project_id: str
    private_key_pem: str = field(repr=False)


def write_service_account(
    folder: Path, project_id: str = "key-project", token_uri: str = GOOGLE_TOKEN_URI
) -> ServiceAccountKey:
    """Write ``sa.json`` into ``folder`` (fields as Google's console writes them)."""
    pem = (
        service_account_private_key()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    email = f"atelier@{project_id}.iam.gserviceaccount.com"
    key_id = uuid.uuid4().hex
    body = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sa.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    return ServiceAccountKey(path, email, key_id, project_id, pem)


@dataclass
class GeminiCall:
    """One generateContent request the fake accepted for processing."""

    model: str
    project: str | None
    location: str | None
    body: dict[str, Any]
    behaviour: str
    auth: str  # "bearer" | "api-key"


@dataclass
class VertexFake(ScriptedFake):
    """State of the fake; tests read the counters and recorded requests."""

    key: ServiceAccountKey
    api_key: str | None = None
    audience: str = GOOGLE_TOKEN_URI
    script: list[str] = field(default_factory=list)
    # Long side of an answer per imageSize (real: 1024/2048/4096; small here so tests stay fast).
    sizes: dict[str, int] = field(default_factory=lambda: {"1K": 64, "2K": 96, "4K": 128})
    expires_in: int = 3599
    retry_after: str = "1"
    grants: int = 0
    refused_grants: int = 0
    calls: int = 0
    requests: list[GeminiCall] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token_url(self) -> str:
        """Where the fake grants tokens."""
        return f"{self.base_url}/token"

    def next_behaviour(self) -> str:
        """Count the call, then pop the script's next behaviour."""
        with self.lock:
            self.calls += 1
        return super().next_behaviour()


def _google_error(code: int, status: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}}, code, headers=headers)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _answer_size(fake: VertexFake, config: dict[str, Any], first: Image.Image | None) -> tuple[int, int]:
    long_side = fake.sizes[config.get("imageSize") or "1K"]
    if config.get("aspectRatio"):
        w, h = (int(x) for x in str(config["aspectRatio"]).split(":"))
        ratio = w / h
    elif first is not None:
        ratio = first.width / first.height
    else:
        ratio = 1.0
    if ratio >= 1:
        return long_side, max(1, round(long_side / ratio))
    return max(1, round(long_side * ratio)), long_side


def create_vertex_app(fake: VertexFake) -> FastAPI:
    """The fake's ASGI app."""
    app = FastAPI()
    public_key = service_account_private_key().public_key()

    @app.post("/token")
    async def token(request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, 400)
        try:
            assertion = str(form.get("assertion") or "")
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=fake.audience,
                issuer=fake.key.client_email,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError as exc:
            fake.refused_grants += 1
            return JSONResponse({"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}, 400)
        if header.get("kid") != fake.key.private_key_id or claims.get("scope") != SCOPE:
            fake.refused_grants += 1
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            fake.refused_grants += 1
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT: lifetime"}, 400)
        with fake.lock:
            fake.grants += 1
            value = f"ya29.fake-{fake.grants}-{uuid.uuid4().hex}"
            fake.tokens.add(value)
        return JSONResponse({"access_token": value, "expires_in": fake.expires_in, "token_type": "Bearer"})

    @app.post("/v1/projects/{project}/locations/{location}/publishers/google/models/{action}")
    async def generate(project: str, location: str, action: str, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in fake.tokens:
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        return await handle(action, project, location, "bearer", request)

    @app.post("/v1/publishers/google/models/{action}")
    async def generate_express(action: str, request: Request) -> Response:
        if fake.api_key is None or request.headers.get("x-goog-api-key") != fake.api_key:
            return _google_error(401, "UNAUTHENTICATED", "API keys are not supported by this API.")
        return await handle(action, None, None, "api-key", request)

    async def handle(action: str, project: str | None, location: str | None, auth: str, request: Request) -> Response:
        model, _, method = action.partition(":")
        if method != "generateContent":
            return _google_error(404, "NOT_FOUND", f"Method {method!r} not found.")
        behaviour = fake.next_behaviour()
        if behaviour == "429":
            headers = {"Retry-After": fake.retry_after}
            return _google_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later.", headers)
        if behaviour == "500":
            return _google_error(500, "INTERNAL", "Internal error encountered.")
        if behaviour == "invalid":
            return _google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        if behaviour == "unauth":
            with fake.lock:
                fake.tokens.clear()
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        body = await request.json()
        problem, images = _validate(body)
        if problem:
            return _google_error(400, "INVALID_ARGUMENT", problem)
        fake.requests.append(GeminiCall(model, project, location, body, behaviour, auth))
        if behaviour == "malformed":
            return PlainTextResponse("<html><body>502 Bad Gateway</body></html>", status_code=200)
        if behaviour == "blocked":
            return JSONResponse(
                {
                    "promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": "The prompt was blocked."},
                    "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
                    "modelVersion": model,
                    "responseId": uuid.uuid4().hex,
                }
            )
        config = body.get("generationConfig", {}).get("imageConfig", {})
        size = _answer_size(fake, config, images[0] if images else None)
        parts: list[dict[str, Any]] = [{"text": "Here is the image you asked for."}]
        finish = "STOP"
        if behaviour == "ok":
            if images:
                image = images[0].convert("RGB").resize(size, Image.Resampling.LANCZOS)
            else:
                image = Image.new("RGB", size, RENDER_COLOUR)
            parts.append({"inlineData": {"mimeType": "image/png", "data": _png(image)}})
        elif behaviour == "drift":
            noise = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            parts.append({"inlineData": {"mimeType": "image/png", "data": _png(Image.fromarray(noise))}})
        elif behaviour == "unsafe":
            parts = [{"text": "I can't create that image."}]
            finish = "IMAGE_SAFETY"
        elif behaviour == "noimage":
            parts = [{"text": "I could not draw this, sorry."}]
        return JSONResponse(
            {
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
                "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
                "modelVersion": model,
                "responseId": f"resp-{uuid.uuid4().hex[:12]}",
            }
        )

    return app


def _validate(body: Any) -> tuple[str | None, list[Image.Image]]:
    """Vertex's checks of a generateContent body; returns (problem or None, decoded inline images)."""
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list) or not body["contents"]:
        return "contents is required", []
    images: list[Image.Image] = []
    for content in body["contents"]:
        if content.get("role") not in ("user", "model") or not content.get("parts"):
            return "each content needs a role and parts", []
        for part in content["parts"]:
            inline = part.get("inlineData")
            if inline is None:
                if not isinstance(part.get("text"), str):
                    return "a part needs text or inlineData", []
                continue
            try:
                data = base64.b64decode(inline["data"], validate=True)
                image = Image.open(io.BytesIO(data))
                image.load()
            except (KeyError, binascii.Error, ValueError, OSError):
                return "Provided image is not valid.", []
            if inline.get("mimeType") != Image.MIME.get(image.format or ""):
                return f"inlineData.mimeType {inline.get('mimeType')!r} does not match the data", []
            images.append(image)
    system = body.get("systemInstruction")
    if system is not None and not (isinstance(system, dict) and system.get("parts")):
        return "systemInstruction needs parts", []
    config = body.get("generationConfig") or {}
    if "IMAGE" not in (config.get("responseModalities") or []):
        return "responseModalities must include IMAGE for an image model", []
    image_config = config.get("imageConfig") or {}
    if image_config.get("aspectRatio") is not None and image_config["aspectRatio"] not in ASPECT_RATIOS:
        return f"Unsupported aspect ratio {image_config['aspectRatio']!r}.", []
    if image_config.get("imageSize") is not None and image_config["imageSize"] not in ("1K", "2K", "4K"):
        return f"Unsupported image size {image_config['imageSize']!r}.", []
    seed = config.get("seed")
    if seed is not None and not (isinstance(seed, int) and -(2**31) <= seed < 2**31):
        return "seed must be an int32", []
    return None, images
