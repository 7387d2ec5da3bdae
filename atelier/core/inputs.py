"""Classify, validate and safely load task input images (data URL, base64, http(s) URL, storage path)."""

from __future__ import annotations

import binascii
import io
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import httpx
import numpy as np
from PIL import Image, ImageOps

from atelier.core.errors import InputTooLargeError, InvalidInputError, UnsafeURLError

SourceKind = Literal["data_url", "base64", "url", "path"]
Loc = tuple[str | int, ...]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Formats Image.open may try. Kept to what clients actually send: letting every Pillow plugin parse
# untrusted bytes widens the attack surface (EPS, for one, shells out to Ghostscript on load).
# The JPEG opener also yields multi-picture camera JPEGs, which report their format as "MPO".
ALLOWED_IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
MAX_PATH_LENGTH = 1024

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_DATA_URL_RE = re.compile(r"^data:([^,]*),(.*)$", re.IGNORECASE | re.DOTALL)
_B64_STD_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_B64_URL_RE = re.compile(r"[A-Za-z0-9_\-]+={0,2}")
_URLSAFE_TO_STD = str.maketrans("-_", "+/")
_WHITESPACE_RE = re.compile(r"\s+")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, exactly (one regex scan per path)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_BLOCKED_HOST_SUFFIXES = (".localhost", ".local", ".internal")
_MAGIC_PREFIXES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class FetchLimits:
    """Bounds applied to every input image, whatever its source."""

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    timeout_seconds: float = 30.0
    max_redirects: int = 3
    allow_private_networks: list[str] = field(default_factory=list)
    allowed_schemes: tuple[str, ...] = ("http", "https")


# --------------------------------------------------------------------------- classification / base64


def classify_source(value: str, *, loc: Loc = ()) -> SourceKind:
    """Tell which kind of input source a string is."""
    text = value.strip()
    if text[:5].lower() == "data:":
        return "data_url"
    scheme = _SCHEME_RE.match(text)
    if scheme:
        if scheme.group(1).lower() in ("http", "https"):
            return "url"
        raise InvalidInputError(f"unsupported URL scheme {scheme.group(1)!r}", loc=loc)
    compact = _WHITESPACE_RE.sub("", text)
    if not _looks_like_base64(compact):
        return "path"
    try:
        # The magic number sits in the first bytes; decoding a prefix keeps classification cheap.
        head = _b64decode_strict(compact[:24])
    except binascii.Error:
        return "path"
    return "base64" if _has_image_magic(head) else "path"


def _looks_like_base64(compact: str) -> bool:
    """Whether a whitespace-free string is well-formed base64 (either alphabet, padding optional)."""
    if len(compact) < 16 or not (_B64_STD_RE.fullmatch(compact) or _B64_URL_RE.fullmatch(compact)):
        return False
    body = compact.rstrip("=")
    return len(body) % 4 != 1 and (body == compact or len(compact) % 4 == 0)


def _has_image_magic(head: bytes) -> bool:
    """Whether decoded bytes start like one of the image formats we accept."""
    return head.startswith(_MAGIC_PREFIXES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _b64decode_strict(compact: str) -> bytes:
    """Decode standard or urlsafe base64 strictly; padding may be omitted. Raises binascii.Error."""
    has_std, has_url = ("+" in compact or "/" in compact), ("-" in compact or "_" in compact)
    if has_std and has_url:
        raise binascii.Error("mixed base64 alphabets")
    text = compact.translate(_URLSAFE_TO_STD)
    if not text.endswith("="):
        text += "=" * (-len(text) % 4)
    return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)


def decode_base64_payload(value: str, *, limits: FetchLimits, loc: Loc = ()) -> bytes:
    """Decode a base64 image payload (data URL or raw base64) within the byte limit."""
    text = value.strip()
    payload = _data_url_payload(text, loc) if text[:5].lower() == "data:" else text
    compact = _WHITESPACE_RE.sub("", payload)
    # Checked on the encoded text so an oversized payload never gets decoded into memory.
    if len(compact) > limits.max_bytes * 4 / 3 + 4:
        raise InputTooLargeError(f"base64 payload exceeds {limits.max_bytes} bytes", loc=loc)
    if not compact:
        raise InvalidInputError("base64 payload is empty", loc=loc)
    try:
        data = _b64decode_strict(compact)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidInputError("not valid base64", loc=loc) from exc
    if len(data) > limits.max_bytes:
        raise InputTooLargeError(f"decoded image exceeds {limits.max_bytes} bytes", loc=loc)
    return data


def _data_url_payload(text: str, loc: Loc) -> str:
    """Return the base64 part of an image data URL, refusing other media types and encodings."""
    match = _DATA_URL_RE.match(text)
    if match is None:
        raise InvalidInputError("malformed data URL", loc=loc)
    media_type, *params = (part.strip().lower() for part in match.group(1).split(";"))
    if not media_type.startswith("image/") or media_type == "image/":
        raise InvalidInputError(f"data URL media type must be image/*, got {media_type!r}", loc=loc)
    if not params or params[-1] != "base64":
        raise InvalidInputError("data URL must be base64-encoded (';base64')", loc=loc)
    return match.group(2)


# --------------------------------------------------------------------------- address / URL checks


def is_blocked_address(ip: str, allow: list[str]) -> bool:
    """Whether an IP address is private/internal and not covered by an allowed CIDR."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return True  # fail closed: something we cannot parse is not something we can vouch for
    networks = _allowed_networks(allow)
    # An IPv4-mapped address is that IPv4 host; 6to4 is judged both as itself and as what it wraps.
    mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    candidates: list[IPAddress] = [mapped] if mapped is not None else [addr, *_sixtofour(addr)]
    if any(net.version == cand.version and cand in net for net in networks for cand in candidates):
        return False
    return any(_is_internal(cand) for cand in candidates)


def _allowed_networks(allow: list[str]) -> list[IPNetwork]:
    """Parse the CIDR/address entries of an allow list; hostnames and malformed CIDRs are skipped."""
    networks: list[IPNetwork] = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue  # a hostname (matched by check_url) or a typo, which must not widen access
    return networks


def _sixtofour(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 address a 6to4 (2002::/16) address tunnels to, which a relay may route to."""
    if isinstance(addr, ipaddress.IPv6Address) and addr in _SIXTOFOUR and addr.sixtofour is not None:
        return [addr.sixtofour]
    return []


def _is_internal(addr: IPAddress) -> bool:
    """Whether one address is in a range a server-side fetch must never reach."""
    if (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    ):
        return True
    if isinstance(addr, ipaddress.IPv4Address):
        return addr in _CGNAT
    # fc00::/7 is covered by is_private; fec0::/10 (deprecated site-local) is not, on 3.11.
    return addr.is_site_local


def check_url(url: str, *, limits: FetchLimits, loc: Loc = (), resolve: bool = True) -> None:
    """Refuse URLs with a bad scheme, credentials, or a host that is or resolves to an internal address."""
    parsed = _parse_url(url, limits=limits, loc=loc)
    host = parsed.raw_host.decode("ascii").rstrip(".").lower()
    allowed_names = {entry.strip().rstrip(".").lower() for entry in limits.allow_private_networks}
    if host in allowed_names:
        return
    if host == "localhost" or host.endswith(_BLOCKED_HOST_SUFFIXES):
        raise UnsafeURLError(f"host {host!r} is not allowed", loc=loc)
    literal = _ip_literal(host)
    if literal is not None:
        if is_blocked_address(literal, limits.allow_private_networks):
            raise UnsafeURLError(f"address {literal} is private or reserved", loc=loc)
        return
    if resolve:
        for addr in _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80), loc):
            if is_blocked_address(addr, limits.allow_private_networks):
                raise UnsafeURLError(f"host {host!r} resolves to private address {addr}", loc=loc)


def _parse_url(url: str, *, limits: FetchLimits, loc: Loc) -> httpx.URL:
    """Parse with httpx's own parser (the one that will connect) and check scheme, host and userinfo."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidInputError(f"malformed URL: {exc}", loc=loc) from exc
    if parsed.scheme not in {scheme.lower() for scheme in limits.allowed_schemes}:
        raise UnsafeURLError(f"URL scheme {parsed.scheme!r} is not allowed", loc=loc)
    if not parsed.raw_host:
        raise InvalidInputError("URL has no host", loc=loc)
    if parsed.userinfo:
        raise UnsafeURLError("URLs with credentials (user:pass@) are not allowed", loc=loc)
    return parsed


def _ip_literal(host: str) -> str | None:
    """Normalise a host that is an IP literal, including legacy forms like 2130706433 or 0x7f.1."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        # inet_aton accepts the integer/octal/hex/short forms that the OS resolver also accepts.
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError):
        return None


def _resolve(host: str, port: int, loc: Loc) -> list[str]:
    """All addresses a hostname resolves to; DNS failure is an input error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidInputError(f"cannot resolve host {host!r}", loc=loc) from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise InvalidInputError(f"cannot resolve host {host!r}", loc=loc)
    return addresses


# --------------------------------------------------------------------------- fetching


# Compressed transfer would let a small response inflate far past max_bytes inside one decoded chunk.
_FETCH_HEADERS = {"Accept-Encoding": "identity", "Accept": "image/*"}


def fetch_url(url: str, *, limits: FetchLimits, client: httpx.Client | None = None, loc: Loc = ()) -> bytes:
    """Download an image URL, re-checking every redirect hop and enforcing size and time limits."""
    # Residual risk: the address is checked by resolving before httpx connects, so a DNS server that
    # answers differently the second time (rebinding) could still steer the connection. Closing that
    # gap needs pinning the resolved IP in the transport; network-level egress rules are the backstop.
    deadline = time.monotonic() + limits.timeout_seconds
    with _client_for(client, limits) as http:
        current = url
        for _hop in range(limits.max_redirects + 1):
            check_url(current, limits=limits, loc=loc)
            target = _describe(current)
            try:
                with http.stream("GET", current, follow_redirects=False, headers=_FETCH_HEADERS) as resp:
                    if resp.is_redirect:
                        current = str(resp.url.join(resp.headers["location"]))
                        continue
                    if not resp.is_success:
                        raise InvalidInputError(f"fetching {target} failed with HTTP {resp.status_code}", loc=loc)
                    return _read_limited(resp, limits=limits, deadline=deadline, loc=loc)
            except httpx.TimeoutException as exc:
                raise InvalidInputError(f"timed out fetching {target}", loc=loc) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise InvalidInputError(f"could not fetch {target}: {type(exc).__name__}", loc=loc) from exc
    raise InvalidInputError(f"too many redirects (more than {limits.max_redirects})", loc=loc)


@contextmanager
def _client_for(client: httpx.Client | None, limits: FetchLimits) -> Iterator[httpx.Client]:
    """Yield the caller's client untouched, or a short-lived one that is closed afterwards."""
    if client is not None:
        yield client
        return
    # trust_env=False: an environment proxy would make the connection target differ from the host we
    # vetted, and .netrc credentials must never be sent to user-supplied URLs.
    with httpx.Client(timeout=limits.timeout_seconds, trust_env=False) as own:
        yield own


def _read_limited(resp: httpx.Response, *, limits: FetchLimits, deadline: float, loc: Loc) -> bytes:
    """Read a streamed body, aborting as soon as it exceeds max_bytes or the overall deadline."""
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise InputTooLargeError(f"response declares {declared} bytes, limit is {limits.max_bytes}", loc=loc)
    body = bytearray()
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > limits.max_bytes:
            raise InputTooLargeError(f"response exceeds {limits.max_bytes} bytes", loc=loc)
        # httpx's timeout bounds each read, not the total; a slow drip would otherwise never end.
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("overall fetch deadline exceeded")
    return bytes(body)


def _describe(url: str) -> str:
    """A URL for error messages, without query or credentials (they may hold signed tokens)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "URL"
    return str(parsed.copy_with(query=None, fragment=None, userinfo=b""))


# --------------------------------------------------------------------------- images


def probe_image(data: bytes, *, limits: FetchLimits, loc: Loc = ()) -> tuple[str, int, int]:
    """Return (format, width, height) from the image header without decoding the pixels."""
    with _open_checked(data, limits=limits, loc=loc) as image:
        return str(image.format), image.width, image.height


# Decoded size request for a JPEG, from its stored (width, height); None decodes at full size.
DraftRequest = Callable[[int, int], tuple[int, int] | None]
ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})
ORIENTATION_TAG = 0x0112


def open_image(data: bytes, *, limits: FetchLimits, loc: Loc = (), draft: DraftRequest | None = None) -> Image.Image:
    """Decode an image fully, after the size checks, with its EXIF orientation applied.

    ``draft`` lets a caller that will shrink the image anyway ask the JPEG decoder for a reduced size
    (shrink-on-load: 1/2, 1/4 or 1/8 of the pixels are never decoded); it is not used when the EXIF
    orientation swaps width and height.
    """
    with _open_checked(data, limits=limits, loc=loc) as image:
        try:
            source_format = image.format
            if draft is not None and source_format == "JPEG":
                _apply_draft(image, draft)
            image.load()
            result = normalise_mode(ImageOps.exif_transpose(image))
            result.format = source_format  # keep the format: callers choose the output encoding from it
            return result
        except Image.DecompressionBombError as exc:
            raise InputTooLargeError(f"image is too large to decode: {exc}", loc=loc) from exc
        # Pillow's decoders raise a zoo of exception types on truncated or hostile data.
        except Exception as exc:
            raise InvalidInputError(f"not a decodable image: {type(exc).__name__}", loc=loc) from exc


HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def to_8bit(image: Image.Image) -> Image.Image:
    """Grey 16-bit/32-bit/float images as 8-bit "L": Pillow's own conversion clips them to white instead."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        scaled = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
    else:  # I;16*, I: 16-bit range unless every value already fits 8 bits
        scaled = values / 257.0 if values.max(initial=0.0) > 255 else values
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def normalise_mode(image: Image.Image) -> Image.Image:
    """Every decoded input in an 8-bit mode the providers handle: 16-bit/float grey scaled, CMYK/YCbCr to RGB."""
    if image.mode in HIGH_DEPTH_MODES:
        return to_8bit(image)
    if image.mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
        return image.convert("RGB")
    return image


def _apply_draft(image: Image.Image, draft: DraftRequest) -> None:
    if image.getexif().get(ORIENTATION_TAG, 1) in ROTATING_ORIENTATIONS:
        return
    size = draft(image.width, image.height)
    if size is not None:
        image.draft(image.mode, size)


@contextmanager
def _open_checked(data: bytes, *, limits: FetchLimits, loc: Loc) -> Iterator[Image.Image]:
    """Open an image lazily and enforce the pixel limit before anyone decodes it."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_IMAGE_FORMATS)
    # The warning only surfaces as an exception where warnings are errors; otherwise our own
    # max_pixels check below is the guard (we never touch Pillow's global MAX_IMAGE_PIXELS).
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputTooLargeError(f"image has too many pixels: {exc}", loc=loc) from exc
    except Exception as exc:
        raise InvalidInputError("not a decodable image", loc=loc) from exc
    with image:
        if image.width * image.height > limits.max_pixels:
            raise InputTooLargeError(
                f"image is {image.width}x{image.height}, more than {limits.max_pixels} pixels", loc=loc
            )
        yield image


# --------------------------------------------------------------------------- storage paths


def safe_relative_path(path: str, *, loc: Loc = ()) -> str:
    """Validate a storage-relative path and return it as a normalised forward-slash key."""
    if not path:
        raise InvalidInputError("path is empty", loc=loc)
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInputError(f"path is longer than {MAX_PATH_LENGTH} characters", loc=loc)
    if _CONTROL_RE.search(path):
        raise InvalidInputError("path contains control characters", loc=loc)
    if "\\" in path:
        raise InvalidInputError("path must use '/' separators, not backslashes", loc=loc)
    if path.startswith("/") or _DRIVE_RE.match(path):
        raise InvalidInputError("path must be relative", loc=loc)
    if path.startswith("~"):
        raise InvalidInputError("path must not start with '~'", loc=loc)
    segments: list[str] = []
    for segment in path.split("/"):
        if segment.strip() == "..":
            raise InvalidInputError("path must not contain '..'", loc=loc)
        if segment in ("", "."):
            continue  # 'a//b' and 'a/./b' both mean 'a/b'
        if not segment.strip():
            raise InvalidInputError("path has a blank segment", loc=loc)
        segments.append(segment)
    if not segments:
        raise InvalidInputError("path is empty", loc=loc)
    return "/".join(segments)
