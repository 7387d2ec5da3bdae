"""The HTTP layer every remote provider shares: logging, error classification, retries, polling, downloads.

One ``ServiceClient`` is made per task run. Each call:

- goes through the runtime's ``httpx.Client`` with the service's timeout and auth headers;
- is appended to the task's ``service_requests`` log as ``{service, method, url, status, duration_ms, error}``
  where ``url`` has credentials and secret-looking query parameters removed (headers are never logged);
- is classified when it fails: 429 → ``ProviderRetryableError`` (``RATE_LIMITED``, with ``Retry-After``),
  5xx/408 → retryable ``PROVIDER_ERROR``, timeouts → retryable ``PROVIDER_TIMEOUT``, connection errors →
  retryable ``NETWORK_ERROR``, 401/403 → ``ProviderFatalError`` (credentials: retrying cannot help, the
  fallback provider may), any other 4xx → ``RemoteInputError`` (a ``ValueError``: never retried, no fallback);
- is retried inside the attempt when that is safe: idempotent calls (GET, or any call marked ``idempotent``)
  on every transient error, other calls only when the service refused them outright (429) or nothing was sent
  (connection refused). Waits honour ``Retry-After`` up to ``max_retry_after_seconds``; a longer wait ends the
  attempt and the task-level retry uses it as its backoff.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from atelier.core.errors import InvalidInputError
from atelier.core.inputs import FetchLimits, check_url
from atelier.core.time import retry_after_seconds as parse_retry_after
from atelier.monitoring import metrics
from atelier.providers.base import ProviderContext, ProviderFatalError, ProviderRetryableError
from atelier.settings import RemoteServiceSettings
from atelier.tasks.enums import ErrorCategory

T = TypeVar("T")

SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "signature", "sig", "x-amz-signature"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Download:
    """A downloaded result file."""

    data: bytes
    content_type: str | None


class RemoteInputError(InvalidInputError):
    """The service rejected the request as invalid (a 4xx other than auth/429): never retried."""


class RemoteJobFailedError(ProviderRetryableError):
    """The remote job itself ended in failure: the next attempt submits a new job instead of polling this one."""

    discard_remote = True


def redact_url(url: str | httpx.URL) -> str:
    """The URL without user info and with secret-looking query values replaced by ``***``."""
    parsed = httpx.URL(str(url))
    params = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in parsed.params.multi_items()]
    clean = parsed.copy_with(username=None, password=None, query=None)
    if params:
        clean = clean.copy_with(params=params)
    return str(clean)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` of a response as seconds (delta-seconds or an HTTP date), or None."""
    return parse_retry_after(response.headers.get("retry-after"))


# Credential shapes vendors echo back in error messages (OpenAI "sk-…", Google "AIza…"); masked before logging.
_KEY_PATTERNS = re.compile(r"\b(sk-[A-Za-z0-9_*.\-]{4,}|AIza[A-Za-z0-9_\-]{8,})")


def _message_parts(body: Any) -> list[str]:
    """The human parts of a vendor error body: ``error`` (a string or ``{message}``), ``message``, ``detail``…"""
    if not isinstance(body, dict):
        return [body if isinstance(body, str) else json.dumps(body, default=str)]
    parts: list[str] = []
    for key in ("error", "message", "detail", "msg", "invalid_params"):
        value = body.get(key)
        if isinstance(value, dict):  # {"error": {"status"|"type", "message"}} (Google, Anthropic, OpenAI)
            named = [str(value[k]) for k in ("status", "type", "message") if isinstance(value.get(k), str | int)]
            value = ": ".join(named) or json.dumps(value, default=str)
        if value and not isinstance(value, str):
            value = json.dumps(value, default=str)
        if value and value not in parts:
            parts.append(value)
    return parts or [json.dumps(body, default=str)]


def error_detail(response: httpx.Response, secret: str | None = None) -> str:
    """A short description of an error answer, with credentials masked."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    text = ": ".join(_message_parts(body))
    if secret:
        text = text.replace(secret, "***")
    return _KEY_PATTERNS.sub("***", text)[:_DETAIL_CHARS]


class ServiceClient:
    """Calls to one remote service on behalf of one task run."""

    def __init__(
        self,
        ctx: ProviderContext,
        settings: RemoteServiceSettings,
        *,
        service: str,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.service = service
        self.base_url = (base_url or settings.base_url).rstrip("/")
        self.headers = dict(headers or {})
        self._sleep = sleep
        self._secret = settings.api_key.get_secret_value() if settings.api_key else None

    # ------------------------------------------------------------------------------------ calls

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (returned as is when it already is absolute)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        ok_statuses: frozenset[int] = frozenset(),
        cancellable: bool = True,
    ) -> httpx.Response:
        """One logical call, retried in the attempt when safe; raises the classified error otherwise.

        Statuses in ``ok_statuses`` are returned to the caller instead of raising (e.g. a 404 the caller
        interprets itself). ``cancellable=False`` is for the calls made after a cancellation (remote cancel).
        """
        method = method.upper()
        safe_to_repeat = method in _IDEMPOTENT if idempotent is None else idempotent
        url = self.url(path)
        attempts = self.settings.call_attempts
        for attempt in range(1, attempts + 1):
            if cancellable:
                self.ctx.check_cancelled()
            try:
                response = self._send(method, url, json_body, form, params, headers)
            except httpx.ConnectError as exc:  # nothing reached the service: always safe to try again
                error: ProviderRetryableError = ProviderRetryableError(
                    f"{self.service}: cannot connect ({exc})", category=ErrorCategory.NETWORK_ERROR
                )
                repeatable = True
            except httpx.TimeoutException as exc:
                error = ProviderRetryableError(
                    f"{self.service}: timed out after {self.settings.timeout_seconds:g}s ({type(exc).__name__})",
                    category=ErrorCategory.PROVIDER_TIMEOUT,
                )
                repeatable = safe_to_repeat
            except httpx.HTTPError as exc:
                error = ProviderRetryableError(
                    f"{self.service}: network error ({exc})", category=ErrorCategory.NETWORK_ERROR
                )
                repeatable = safe_to_repeat
            else:
                if response.is_success or response.status_code in ok_statuses:
                    return response
                classified = self._classify(method, response)
                if not isinstance(classified, ProviderRetryableError):
                    raise classified
                error = classified
                repeatable = response.status_code == 429 or safe_to_repeat
            if attempt == attempts or not repeatable:
                raise error
            delay = self._delay(attempt, error.retry_after)
            if delay is None:
                raise error
            if cancellable:
                self.wait(delay)
            else:
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns or raises

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET and decode JSON."""
        return self.decode(self.request("GET", path, **kwargs))

    def post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        """POST a JSON body and decode the JSON answer."""
        return self.decode(self.request("POST", path, json_body=body, **kwargs))

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body, or a retryable error naming the service when it is not JSON."""
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderRetryableError(
                f"{self.service}: malformed response (HTTP {response.status_code}, not JSON)",
                category=ErrorCategory.PROVIDER_ERROR,
            ) from exc

    def _send(
        self,
        method: str,
        url: str,
        json_body: Any,
        form: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response:
        started = time.perf_counter()
        entry: dict[str, Any] = {"service": self.service, "method": method, "url": redact_url(url)}
        try:
            response = self.ctx.http.request(
                method,
                url,
                json=json_body,
                data=dict(form) if form else None,
                params=dict(params) if params else None,
                headers={**self.headers, **(headers or {})},
                timeout=self.settings.timeout_seconds,
            )
            entry["status"] = response.status_code
        except httpx.HTTPError as exc:
            entry["error"] = type(exc).__name__
            raise
        finally:
            self._log_call(entry, started)
        return response

    def _log_call(self, entry: dict[str, Any], started: float) -> None:
        """Finish a call's log entry (duration, time), append it to the task's log and observe its latency."""
        elapsed = time.perf_counter() - started
        entry["duration_ms"] = round(elapsed * 1000, 1)
        entry["at"] = datetime.now(UTC).isoformat()
        self.ctx.log_request(entry)
        metrics.observe_provider_call(
            self.service, metrics.call_outcome(entry.get("status"), entry.get("error")), elapsed
        )

    def _classify(self, method: str, response: httpx.Response) -> Exception:
        status = response.status_code
        what = f"{self.service}: {method} {redact_url(response.request.url)} returned HTTP {status}"
        detail = error_detail(response, self._secret)
        if status == 429:
            return ProviderRetryableError(
                f"{what} (rate limited): {detail}",
                retry_after=retry_after_seconds(response),
                category=ErrorCategory.RATE_LIMITED,
            )
        if status >= 500 or status == 408:
            return ProviderRetryableError(
                f"{what}: {detail}", retry_after=retry_after_seconds(response), category=ErrorCategory.PROVIDER_ERROR
            )
        if status in (401, 403):
            return ProviderFatalError(f"{what}: credentials rejected ({detail})")
        raise RemoteInputError(f"{what}: {detail}", details={"service": self.service, "status": status})

    def _delay(self, attempt: int, retry_after: float | None) -> float | None:
        if retry_after is not None:
            return retry_after if retry_after <= self.settings.max_retry_after_seconds else None
        return float(min(0.5 * 2 ** (attempt - 1), 8.0))

    def wait(self, seconds: float) -> None:
        """Sleep in short slices, checking for cancellation (and renewing nothing: the heartbeat thread does)."""
        deadline = time.monotonic() + seconds
        while True:
            self.ctx.check_cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._sleep(min(left, 0.25))

    # ------------------------------------------------------------------------------------ async jobs

    def poll(
        self,
        check: Callable[[], T | None],
        *,
        what: str,
        interval: float | None = None,
        max_wait: float | None = None,
    ) -> T:
        """Call ``check`` until it returns a value; raises a timeout error after ``max_wait`` seconds.

        ``check`` raises to end the job (failure) and returns None while it is still running.
        """
        interval = interval or self.settings.poll_interval_seconds
        limit = max_wait or self.settings.max_wait_seconds
        deadline = time.monotonic() + limit
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                raise ProviderRetryableError(
                    f"{self.service}: {what} still not finished after {limit:g}s",
                    category=ErrorCategory.PROVIDER_TIMEOUT,
                )
            self.wait(interval)

    def download(self, url: str, *, allowed_hosts: tuple[str, ...] = ()) -> Download:
        """Fetch a result file into memory (bounded), SSRF-checked unless the host is the service's own."""
        base = self.ctx.fetch_limits or FetchLimits()
        limits = replace(
            base, allow_private_networks=[*base.allow_private_networks, *self._trusted_hosts(), *allowed_hosts]
        )
        check_url(url, limits=limits, loc=("result",))
        started = time.perf_counter()
        entry: dict[str, Any] = {"service": self.service, "method": "GET", "url": redact_url(url)}
        chunks: list[bytes] = []
        size = 0
        content_type: str | None = None
        try:
            with self.ctx.http.stream("GET", url, timeout=self.settings.timeout_seconds) as response:
                entry["status"] = response.status_code
                if not response.is_success:
                    raise self._classify_download(response)
                content_type = response.headers.get("content-type")
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.settings.max_download_bytes:
                        raise ProviderFatalError(
                            f"{self.service}: result larger than {self.settings.max_download_bytes} bytes"
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException as exc:
            entry["error"] = type(exc).__name__
            raise ProviderRetryableError(
                f"{self.service}: result download timed out", category=ErrorCategory.PROVIDER_TIMEOUT
            ) from exc
        except httpx.HTTPError as exc:
            entry["error"] = type(exc).__name__
            raise ProviderRetryableError(
                f"{self.service}: result download failed ({exc})", category=ErrorCategory.NETWORK_ERROR
            ) from exc
        finally:
            self._log_call(entry, started)
        return Download(b"".join(chunks), content_type)

    def _classify_download(self, response: httpx.Response) -> Exception:
        if response.status_code in (404, 410):  # an expired result URL: a new job will give a new one
            return RemoteJobFailedError(f"{self.service}: result file is gone (HTTP {response.status_code})")
        return ProviderRetryableError(
            f"{self.service}: result download returned HTTP {response.status_code}",
            retry_after=retry_after_seconds(response),
        )

    def _trusted_hosts(self) -> list[str]:
        host = httpx.URL(self.base_url).host
        return [host] if host else []
