"""Vertex AI Gemini image models ("Nano Banana"): the VERTEX provider and the auth/client the upscaler reuses.

Protocol (Vertex AI REST, https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference):

- Auth, service account (``settings.vertex.credentials_file``: the Google JSON key with ``client_email``,
  ``private_key``, ``private_key_id``, ``token_uri``, ``project_id``): an RS256 JWT assertion (header ``kid`` =
  ``private_key_id``; claims ``iss`` = client_email, ``scope`` = ``https://www.googleapis.com/auth/cloud-platform``,
  ``aud`` = the key file's ``token_uri``, ``iat``, ``exp`` = iat + 3600) is exchanged by
  ``POST {token_url}`` with the form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`` →
  ``{"access_token", "expires_in", "token_type": "Bearer"}``; a refused assertion answers 400/401
  ``{"error": "invalid_grant", "error_description"}``. ``token_url`` is ``settings.vertex.token_url`` when set
  (a proxy, a test server), else the key file's ``token_uri``. Tokens are cached per process (thread-safe, keyed
  by key file, key id and token URL) until 60 s before they expire; a 401 from Vertex drops the cached token and
  the call is made once more with a fresh one.
- Auth, express mode (``settings.vertex.api_key`` and no key file): header ``x-goog-api-key``, no OAuth, and the
  project-less path ``/v1/publishers/google/models/{model}:generateContent``.
- Generate: ``POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
  with ``Authorization: Bearer <token>``; ``base`` is ``settings.vertex.base_url`` with ``{location}``
  substituted (the ``global`` location has no regional host: ``https://aiplatform.googleapis.com``).
  Body: ``{"contents": [{"role": "user", "parts": [{"text"}, {"inlineData": {"mimeType", "data": <base64>}}…]}],
  "systemInstruction": {"parts": [{"text"}]}, "generationConfig": {"temperature", "topP", "seed"?,
  "responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio"?, "imageSize"?}}}``.
  ``aspectRatio`` is one of 1:1, 3:2, 2:3, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9. ``imageSize`` (1K/2K/4K) is
  only understood by the Gemini 3 image models; it is left out for the ``gemini-2.*`` models, which answer at
  about 1K. ``seed`` is an int32 on Vertex: a larger task seed is sent modulo 2^31.
- Answer: ``{"candidates": [{"content": {"role": "model", "parts": [{"text"}, {"inlineData": {"mimeType",
  "data"}}]}, "finishReason", "finishMessage"?}], "promptFeedback": {"blockReason", "blockReasonMessage"}?,
  "usageMetadata": {…}, "modelVersion", "responseId"}``; parts flagged ``"thought": true`` (the Gemini 3 models'
  draft images and reasoning) are skipped. A ``promptFeedback.blockReason`` or a blocking
  ``finishReason`` (SAFETY, PROHIBITED_CONTENT, IMAGE_SAFETY, RECITATION, …) without an image is a content
  refusal (fatal, ``CONTENT_REJECTED``: the fallback provider may still run); an answer without an image and
  without a block is a failed generation (retryable).
- Errors: Google's shape ``{"error": {"code", "message", "status"}}``. 400 ``INVALID_ARGUMENT`` is an input
  error (never retried), 401 ``UNAUTHENTICATED`` a stale/revoked token (refreshed once), 403 a permission
  problem (fatal), 429 ``RESOURCE_EXHAUSTED`` and 5xx are retried (``ServiceClient``).

generateContent is synchronous: there is no remote job id, so nothing is saved for a resume; a resumed task
simply calls again. The call has no remote side effect, so it is marked idempotent (retried in the attempt on
5xx and timeouts). The answer's ``responseId`` is kept as ``service_task_id`` for support requests. Secrets
(private key, assertion, access token, API key) travel only in headers and form bodies, which are never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import jwt

from atelier.core.errors import InvalidInputError
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderResult, ProviderRetryableError
from atelier.providers.configs import VertexConfig
from atelier.providers.remote.client import RemoteJobFailedError, ServiceClient
from atelier.providers.remote.media import Payload, image_payload, store_result_image
from atelier.settings import ProviderSettings, VertexSettings
from atelier.tasks.enums import ErrorCategory, ProviderType, TaskType

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
ASSERTION_LIFETIME_SECONDS = 3600
TOKEN_REFRESH_MARGIN_SECONDS = 60.0
GLOBAL_HOST = "https://aiplatform.googleapis.com"

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "3:2", "2:3", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# Models that reject/ignore ``imageConfig.imageSize`` (it came with the Gemini 3 image models).
NO_IMAGE_SIZE_PREFIXES = ("gemini-2.",)
# finishReason values that mean the model refused the content (as opposed to failing to produce an image).
BLOCK_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "RECITATION",
        "IMAGE_RECITATION",
        "BLOCKLIST",
        "SPII",
    }
)
DEFAULT_SYSTEM_INSTRUCTION = (
    "You are a fashion imaging specialist producing e-commerce and editorial photographs. Render garments, "
    "fabrics, prints, logos and accessories faithfully (true colours, textures, seams and proportions), keep "
    "people's faces, bodies and poses natural and consistent with any reference image, use clean professional "
    "lighting, and never add text, watermarks or borders unless asked. Always answer with an image."
)
SERVICE = "vertex"
_DETAIL_CHARS = 300


# ---------------------------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class ServiceAccount:
    """The fields of a Google service-account JSON key that the JWT-bearer flow needs."""

    path: Path
    client_email: str
    private_key_id: str
    token_uri: str
    project_id: str | None
    private_key: str = field(repr=False)

    @classmethod
    def load(cls, path: Path) -> ServiceAccount:
        """Read and check a key file; errors name the file and the missing field, never the key itself."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise _config_error(f"cannot read the service-account key file {path} ({exc.strerror})") from exc
        except ValueError as exc:
            raise _config_error(f"the service-account key file {path} is not JSON") from exc
        if not isinstance(raw, dict):
            raise _config_error(f"the service-account key file {path} is not a JSON object")
        if raw.get("type", "service_account") != "service_account":
            raise _config_error(f"{path} is a {raw.get('type')!r} credential, not a service-account key")
        missing = [name for name in ("client_email", "private_key") if not isinstance(raw.get(name), str)]
        if missing:
            raise _config_error(f"the service-account key file {path} lacks {', '.join(missing)}")
        return cls(
            path=Path(path),
            client_email=raw["client_email"],
            private_key_id=str(raw.get("private_key_id") or ""),
            token_uri=str(raw.get("token_uri") or DEFAULT_TOKEN_URI),
            project_id=raw.get("project_id") if isinstance(raw.get("project_id"), str) else None,
            private_key=raw["private_key"],
        )

    def assertion(self, now: float | None = None) -> str:
        """The signed RS256 JWT exchanged for an access token."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
        }
        headers = {"kid": self.private_key_id} if self.private_key_id else None
        try:
            return jwt.encode(claims, self.private_key, algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:  # the message never carries the key
            raise _config_error(
                f"the private key in {self.path} cannot sign an RS256 assertion ({type(exc).__name__})"
            ) from exc


def _config_error(message: str) -> ProviderFatalError:
    return ProviderFatalError(f"{SERVICE}: {message}", category=ErrorCategory.PROVIDER_NOT_AVAILABLE)


@dataclass
class _Token:
    value: str
    expires_at: float  # time.monotonic()


class TokenCache:
    """Access tokens of this process, keyed by (key file, key id, token URL); thread-safe.

    One fetch per key at a time: threads wanting the same token wait for the one fetching it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._key_locks: dict[tuple[str, ...], threading.Lock] = {}

    def get(self, key: tuple[str, ...], fetch: Callable[[], tuple[str, float]]) -> str:
        """A valid cached token, or a new one from ``fetch`` (which returns (token, lifetime seconds))."""
        cached = self._valid(key)
        if cached is not None:
            return cached
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            cached = self._valid(key)  # another thread may have fetched it meanwhile
            if cached is not None:
                return cached
            value, lifetime = fetch()
            expires_at = self._clock() + max(0.0, lifetime - TOKEN_REFRESH_MARGIN_SECONDS)
            with self._lock:
                self._tokens[key] = _Token(value, expires_at)
            return value

    def drop(self, key: tuple[str, ...], value: str) -> None:
        """Forget ``value`` (rejected by the service) unless another thread already replaced it."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.value == value:
                del self._tokens[key]

    def clear(self) -> None:
        """Forget every token."""
        with self._lock:
            self._tokens.clear()

    def _valid(self, key: tuple[str, ...]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and self._clock() < token.expires_at:
                return token.value
            return None


TOKENS = TokenCache()


def vertex_base_url(settings: VertexSettings) -> str:
    """``settings.base_url`` with ``{location}`` filled in (``global`` has no regional host name)."""
    base = settings.base_url
    if settings.location == "global":
        base = base.replace("{location}-", "")
    return base.replace("{location}", settings.location).rstrip("/")


class VertexAuth:
    """The credentials of one task run: a cached service-account bearer token, or an express-mode API key."""

    def __init__(self, ctx: ProviderContext, settings: VertexSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.account: ServiceAccount | None = None
        self.api_key: str | None = None
        if settings.credentials_file is not None:
            self.account = ServiceAccount.load(settings.credentials_file)
        elif settings.api_key is not None and settings.api_key.get_secret_value():
            self.api_key = settings.api_key.get_secret_value()
        else:
            raise _config_error(
                "no credentials configured: set ATELIER_PROVIDERS__VERTEX__CREDENTIALS_FILE to a service-account "
                "JSON key file (or ATELIER_PROVIDERS__VERTEX__API_KEY for Vertex express mode)"
            )
        self._token: str | None = None

    @property
    def uses_oauth(self) -> bool:
        """True with a service account (tokens can be refreshed), False in express mode."""
        return self.account is not None

    @property
    def project(self) -> str | None:
        """``settings.vertex.project``, else the key file's ``project_id``."""
        return self.settings.project or (self.account.project_id if self.account else None)

    @property
    def token_url(self) -> str:
        """Where assertions are exchanged: the ``token_url`` setting, else the key file's ``token_uri``."""
        assert self.account is not None
        return self.settings.token_url or self.account.token_uri

    def _cache_key(self) -> tuple[str, ...]:
        assert self.account is not None
        return (str(self.account.path.resolve()), self.account.private_key_id, self.token_url)

    def headers(self) -> dict[str, str]:
        """The auth header of the next call (fetching a token when none is cached)."""
        if self.api_key is not None:
            return {"x-goog-api-key": self.api_key}
        self._token = TOKENS.get(self._cache_key(), self._fetch_token)
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """Drop the token the service just rejected (401) so that the next call re-authenticates."""
        if self.account is not None and self._token is not None:
            TOKENS.drop(self._cache_key(), self._token)
            self._token = None

    def _fetch_token(self) -> tuple[str, float]:
        assert self.account is not None
        client = ServiceClient(self.ctx, self.settings, service=f"{SERVICE}-oauth", base_url=self.token_url)
        response = client.request(
            "POST",
            self.token_url,
            form={"grant_type": JWT_BEARER_GRANT, "assertion": self.account.assertion()},
            idempotent=True,  # a token grant changes nothing on the server
            ok_statuses=frozenset({400, 401, 403}),
        )
        body = client.decode(response)
        if response.status_code in (400, 401, 403):
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            raise ProviderFatalError(
                f"{SERVICE}: the token endpoint refused the service account {self.account.client_email} "
                f"(HTTP {response.status_code}: {str(error or 'error')[:80]}: {str(description or '')[:200]})"
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderRetryableError(f"{SERVICE}: the token endpoint's answer has no access_token")
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else float(ASSERTION_LIFETIME_SECONDS)
        return token, lifetime


# ---------------------------------------------------------------------------------------------- generateContent


class GeminiClient:
    """``generateContent`` calls on Vertex for one task run (auth, 401 refresh, logging, classification)."""

    def __init__(self, ctx: ProviderContext, settings: VertexSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.auth = VertexAuth(ctx, settings)
        self.client = ServiceClient(ctx, settings, service=SERVICE, base_url=vertex_base_url(settings))

    def path(self, model: str) -> str:
        """The generateContent path of ``model`` (project-less in express mode)."""
        if not self.auth.uses_oauth:
            return f"v1/publishers/google/models/{model}:generateContent"
        project = self.auth.project
        if not project:
            raise _config_error(
                "no Google Cloud project: set ATELIER_PROVIDERS__VERTEX__PROJECT or use a key file with project_id"
            )
        location = self.settings.location
        return f"v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent"

    def generate(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST the request; a 401 refreshes a service-account token once. Returns the decoded answer."""
        path = self.path(model)
        for refreshed in (False, True):
            response = self.client.request(
                "POST",
                path,
                json_body=body,
                headers=self.auth.headers(),
                idempotent=True,
                ok_statuses=frozenset({401}),
            )
            if response.status_code != 401:
                answer = self.client.decode(response)
                if not isinstance(answer, dict):
                    raise RemoteJobFailedError(f"{SERVICE}: generateContent answered {type(answer).__name__}")
                return answer
            self.auth.invalidate()
            if refreshed or not self.auth.uses_oauth:
                break
        raise ProviderFatalError(
            f"{SERVICE}: generateContent returned HTTP 401: credentials rejected ({google_error(response)})"
        )


def google_error(response: httpx.Response) -> str:
    """``status: message`` of Google's error shape, or the start of the body."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:_DETAIL_CHARS]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('status', '')}: {error.get('message', '')}"[:_DETAIL_CHARS]
    return json.dumps(body)[:_DETAIL_CHARS]


def nearest_aspect_ratio(width: float, height: float) -> str:
    """The supported aspect ratio closest (in log space) to width/height."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - target)

    return min(ASPECT_RATIOS, key=distance)


def supports_image_size(model: str) -> bool:
    """Whether ``model`` understands ``imageConfig.imageSize`` (the Gemini 3 image models do, 2.x do not)."""
    name = model.rsplit("/", 1)[-1]
    return not name.startswith(NO_IMAGE_SIZE_PREFIXES)


def inline_part(payload: Payload) -> dict[str, Any]:
    """An image part of a request."""
    return {"inlineData": {"mimeType": payload.mime, "data": payload.base64}}


def request_body(
    *,
    prompt: str,
    images: list[Payload],
    system_instruction: str,
    temperature: float,
    top_p: float,
    model: str,
    aspect_ratio: str | None,
    image_size: str | None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A generateContent body asking for an image (and text) answer."""
    image_config: dict[str, Any] = {}
    if aspect_ratio:
        image_config["aspectRatio"] = aspect_ratio
    if image_size and supports_image_size(model):
        image_config["imageSize"] = image_size
    generation: dict[str, Any] = {"temperature": temperature, "topP": top_p, "responseModalities": ["TEXT", "IMAGE"]}
    if seed is not None:
        generation["seed"] = int(seed) % 2**31
    if image_config:
        generation["imageConfig"] = image_config
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}, *(inline_part(image) for image in images)]}],
        "systemInstruction": {"parts": [{"text": system_instruction}]},
        "generationConfig": generation,
    }


def answer_image(answer: dict[str, Any]) -> Payload:
    """The first image of an answer; raises CONTENT_REJECTED for a refusal, retryable when it simply has none."""
    feedback = answer.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        message = feedback.get("blockReasonMessage") or ""
        raise ProviderFatalError(
            f"{SERVICE}: the prompt was blocked ({feedback['blockReason']}) {message}".strip()[:_DETAIL_CHARS],
            category=ErrorCategory.CONTENT_REJECTED,
        )
    candidates = answer.get("candidates")
    if not isinstance(candidates, list):
        raise RemoteJobFailedError(f"{SERVICE}: the answer has no candidates")
    reasons: list[str] = []
    texts: list[str] = []
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or part.get("thought"):  # Gemini 3 "thinking" drafts are not the answer
                continue
            inline = part.get("inlineData")
            if isinstance(inline, dict) and str(inline.get("mimeType", "")).startswith("image/"):
                try:
                    data = base64.b64decode(str(inline.get("data", "")), validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise RemoteJobFailedError(f"{SERVICE}: the answer's image is not valid base64") from exc
                if data:
                    return Payload(data, str(inline["mimeType"]))
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
        if candidate.get("finishReason"):
            reasons.append(str(candidate["finishReason"]))
            if candidate.get("finishMessage"):
                texts.append(str(candidate["finishMessage"]))
    said = " ".join(texts).strip()
    said = f": {said}" if said else ""
    blocked = [reason for reason in reasons if reason in BLOCK_FINISH_REASONS]
    if blocked:
        raise ProviderFatalError(
            f"{SERVICE}: the model refused to produce the image ({', '.join(blocked)}){said}"[:_DETAIL_CHARS],
            category=ErrorCategory.CONTENT_REJECTED,
        )
    finished = f" (finishReason {', '.join(reasons)})" if reasons else ""
    raise RemoteJobFailedError(f"{SERVICE}: the answer has no image{finished}{said}"[:_DETAIL_CHARS])


# ---------------------------------------------------------------------------------------------- provider


class VertexProvider:
    """GENERATION and EDITING with a Gemini image model on Vertex AI."""

    provider_type: ClassVar[ProviderType] = ProviderType.VERTEX
    task_types: ClassVar[frozenset[TaskType]] = frozenset({TaskType.GENERATION, TaskType.EDITING})

    def __init__(self, settings: VertexSettings) -> None:
        self.settings = settings

    def run(self, ctx: ProviderContext) -> ProviderResult:
        """Send the prompt and images inline, store the image of the answer."""
        config = ctx.config if isinstance(ctx.config, VertexConfig) else VertexConfig()
        model = config.model or self.settings.model
        gemini = GeminiClient(ctx, self.settings)
        body = request_body(
            prompt=str(ctx.inputs["prompt"]),
            images=self.images(ctx),
            system_instruction=config.system_instructions or DEFAULT_SYSTEM_INSTRUCTION,
            temperature=config.temperature,
            top_p=config.top_p,
            model=model,
            aspect_ratio=config.aspect_ratio or _task_ratio(ctx.inputs),
            image_size=config.image_size,
            seed=ctx.inputs.get("seed"),
        )
        ctx.progress(10.0)
        answer = gemini.generate(model, body)
        ctx.progress(85.0)
        path, _image = store_result_image(ctx, answer_image(answer).data)
        ctx.progress(100.0)
        response_id = answer.get("responseId")
        return ProviderResult(
            outputs={"result_image_path": path},
            service_task_id=response_id if isinstance(response_id, str) and response_id else None,
        )

    def images(self, ctx: ProviderContext) -> list[Payload]:
        """Inline images: the base image first (EDITING), then the reference images."""
        inputs = ctx.inputs
        payloads: list[Payload] = []
        if ctx.task_type == TaskType.EDITING:
            base = inputs.get("base_image_path")
            if not base:
                raise InvalidInputError("EDITING on Vertex needs base_image", loc=("base_image",))
            payloads.append(image_payload(ctx, base, "base_image"))
            for reference in inputs.get("reference_images") or []:
                payloads.append(image_payload(ctx, reference, "reference_images"))
        if inputs.get("reference_image_path"):
            payloads.append(image_payload(ctx, inputs["reference_image_path"], "reference_image_path"))
        return payloads


def _task_ratio(inputs: dict[str, Any]) -> str | None:
    width, height = inputs.get("width"), inputs.get("height")
    if width and height:
        return nearest_aspect_ratio(float(width), float(height))
    return None


def providers(settings: ProviderSettings) -> list[Any]:
    """The Vertex provider, connected with ``settings.vertex``."""
    return [VertexProvider(settings.vertex)]
