"""Tests for atelier.core.inputs: source classification, base64, SSRF checks, fetching, images, paths."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageFile

from atelier.core.errors import InputTooLargeError, InvalidInputError, UnsafeURLError
from atelier.core.inputs import (
    FetchLimits,
    check_url,
    classify_source,
    decode_base64_payload,
    fetch_url,
    is_blocked_address,
    open_image,
    probe_image,
    safe_relative_path,
)

LOC: tuple[str | int, ...] = ("body", "input_image")
SMALL_LIMIT = 64 * 1024
HOLD_SECONDS = 3.0


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (4, 3), mode: str = "RGB") -> bytes:
    """Encode a small solid image in the given format."""
    buf = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 0).save(buf, fmt)
    return buf.getvalue()


PNG = image_bytes()
PNG_B64 = base64.b64encode(PNG).decode()
JPEG = image_bytes("JPEG")
JPEG_URLSAFE_B64 = base64.urlsafe_b64encode(JPEG).decode().rstrip("=")  # starts "_9j_": urlsafe alphabet


# --------------------------------------------------------------------------- local HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        """Record the request and dispatch on its path."""
        server = cast(_Server, self.server)
        with server.lock:
            server.paths.append(self.path)
        route = _ROUTES.get(urlsplit(self.path).path, _not_found)
        # The client may hang up on purpose (size or time limit); that is the point of those tests.
        with contextlib.suppress(OSError):
            route(self, server)

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Send a complete response with a Content-Length."""
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _image(h: _Handler, s: _Server) -> None:
    h.send(200, PNG, {"Content-Type": "image/png"})


def _not_found(h: _Handler, s: _Server) -> None:
    h.send(404, b"not found")


def _server_error(h: _Handler, s: _Server) -> None:
    h.send(500, b"boom")


def _redirect_to(location: str) -> Callable[[_Handler, _Server], None]:
    def route(h: _Handler, s: _Server) -> None:
        h.send(302, headers={"Location": location})

    return route


def _large(h: _Handler, s: _Server) -> None:
    # No Content-Length: the size is only discoverable by reading. After the oversized body the
    # connection stays open, so a client that waits for the end instead of aborting times out.
    h.send_response(200)
    h.end_headers()
    h.wfile.write(b"x" * (SMALL_LIMIT * 2))
    s.stop.wait(HOLD_SECONDS)


def _declared_huge(h: _Handler, s: _Server) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "10000000")
    h.end_headers()
    h.wfile.write(b"x" * 10)
    s.stop.wait(HOLD_SECONDS)


def _slow(h: _Handler, s: _Server) -> None:
    s.stop.wait(1.0)
    h.send(200, PNG)


def _drip(h: _Handler, s: _Server) -> None:
    h.send_response(200)
    h.end_headers()
    for _ in range(30):
        h.wfile.write(b"x")
        if s.stop.wait(0.1):
            return


_ROUTES: dict[str, Callable[[_Handler, _Server], None]] = {
    "/image.png": _image,
    "/missing": _not_found,
    "/error": _server_error,
    "/redirect": _redirect_to("/image.png"),
    "/redirect-metadata": _redirect_to("http://169.254.169.254/latest/meta-data"),
    "/redirect-loop": _redirect_to("/redirect-loop"),
    "/large": _large,
    "/declared-huge": _declared_huge,
    "/slow": _slow,
    "/drip": _drip,
}


@dataclass
class LocalServer:
    url: str
    server: _Server

    @property
    def paths(self) -> list[str]:
        with self.server.lock:
            return list(self.server.paths)


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield LocalServer(url=f"http://{host!s}:{port}", server=server)
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


LOCAL = FetchLimits(max_bytes=SMALL_LIMIT, timeout_seconds=2.0, allow_private_networks=["127.0.0.1/32"])
LOCAL_FAST_TIMEOUT = FetchLimits(max_bytes=SMALL_LIMIT, timeout_seconds=0.5, allow_private_networks=["127.0.0.1/32"])


# --------------------------------------------------------------------------- classify_source


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (f"data:image/png;base64,{PNG_B64}", "data_url"),
        (f"DATA:image/png;base64,{PNG_B64}", "data_url"),
        ("http://example.com/a.png", "url"),
        ("https://example.com/a.png", "url"),
        ("HTTPS://example.com/a.png", "url"),
        (PNG_B64, "base64"),
        (base64.b64encode(JPEG).decode(), "base64"),
        (base64.b64encode(image_bytes("GIF")).decode(), "base64"),
        (base64.b64encode(image_bytes("WEBP")).decode(), "base64"),
        (base64.b64encode(image_bytes("BMP")).decode(), "base64"),
        (base64.b64encode(image_bytes("TIFF")).decode(), "base64"),
        (JPEG_URLSAFE_B64, "base64"),
        ("\n".join(PNG_B64[i : i + 76] for i in range(0, len(PNG_B64), 76)), "base64"),
        ("inputs/2024/cat.png", "path"),
        ("aaaa/bbbb/cccc/dddd", "path"),  # valid base64, but decodes to no image magic
        ("iVBORw0KGgo=", "path"),  # PNG magic, but shorter than 16 characters
        ("//evil.example/a.png", "path"),  # scheme-relative: a path, which safe_relative_path refuses
    ],
)
def test_classify_source(value: str, kind: str) -> None:
    assert classify_source(value) == kind


@pytest.mark.parametrize("value", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com/"])
def test_classify_source_refuses_other_schemes(value: str) -> None:
    with pytest.raises(InvalidInputError, match="unsupported URL scheme") as info:
        classify_source(value, loc=LOC)
    assert info.value.loc == LOC


# --------------------------------------------------------------------------- decode_base64_payload


@pytest.mark.parametrize(
    "value",
    [
        f"data:image/png;base64,{PNG_B64}",
        f"data:image/png;name=cat.png;base64,{PNG_B64}",
        f"  data:IMAGE/PNG;BASE64,{PNG_B64}\n",
        PNG_B64,
    ],
)
def test_decode_base64_payload_accepts(value: str) -> None:
    assert decode_base64_payload(value, limits=FetchLimits()) == PNG


def test_decode_base64_payload_accepts_urlsafe_unpadded() -> None:
    assert "_" in JPEG_URLSAFE_B64
    assert decode_base64_payload(JPEG_URLSAFE_B64, limits=FetchLimits()) == JPEG
    with pytest.raises(InvalidInputError, match="not valid base64"):
        decode_base64_payload("+" + JPEG_URLSAFE_B64[1:], limits=FetchLimits())  # mixed alphabets


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"data:text/plain;base64,{PNG_B64}", "image"),
        (f"data:;base64,{PNG_B64}", "image"),
        (f"data:image/png,{PNG_B64}", "base64"),
        (f"data:image/png;base64;charset=x,{PNG_B64}", "base64"),
        ("data:image/png;base64", "malformed"),
        ("!!!!not*base64!!!!", "not valid base64"),
        (PNG_B64 + "A", "not valid base64"),  # a length that no padding can fix
        ("QUJD=QUJD", "not valid base64"),  # data after padding
        ("", "empty"),
    ],
)
def test_decode_base64_payload_refuses(value: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        decode_base64_payload(value, limits=FetchLimits(), loc=LOC)
    assert info.value.loc == LOC
    assert not isinstance(info.value, InputTooLargeError)


def test_decode_base64_payload_refuses_oversize_before_decoding() -> None:
    limits = FetchLimits(max_bytes=300)
    # Not base64 at all: decoding it first would report "not valid base64" instead.
    with pytest.raises(InputTooLargeError):
        decode_base64_payload("!" * 405, limits=limits, loc=LOC)
    with pytest.raises(InputTooLargeError):
        decode_base64_payload("data:image/png;base64," + "!" * 405, limits=limits, loc=LOC)


def test_decode_base64_payload_checks_decoded_size() -> None:
    assert decode_base64_payload(base64.b64encode(b"x" * 10).decode(), limits=FetchLimits(max_bytes=10))
    with pytest.raises(InputTooLargeError):
        decode_base64_payload(base64.b64encode(b"x" * 11).decode(), limits=FetchLimits(max_bytes=10))


# --------------------------------------------------------------------------- is_blocked_address


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.255.255.254",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:100.64.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
        "not-an-ip",
    ],
)
def test_is_blocked_address_blocks_internal(ip: str) -> None:
    assert is_blocked_address(ip, [])


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_is_blocked_address_allows_public(ip: str) -> None:
    assert not is_blocked_address(ip, [])


@pytest.mark.parametrize(
    ("ip", "allow", "blocked"),
    [
        ("127.0.0.1", ["127.0.0.1/32"], False),
        ("10.1.2.3", ["10.0.0.0/8"], False),
        ("10.1.2.3", ["10.1.2.3"], False),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], False),
        ("fd00::5", ["fd00::/64"], False),
        ("10.1.2.3", ["192.168.0.0/16"], True),
        ("10.1.2.3", ["::/0"], True),  # an IPv6 CIDR does not cover an IPv4 address
        ("10.1.2.3", ["10.0.0.0/33"], True),  # a malformed CIDR widens nothing
        ("10.1.2.3", ["cache.internal"], True),  # hostnames are check_url's business
    ],
)
def test_is_blocked_address_allow_list(ip: str, allow: list[str], blocked: bool) -> None:
    assert is_blocked_address(ip, allow) is blocked


# --------------------------------------------------------------------------- check_url


def _fake_getaddrinfo(addresses: list[str], calls: list[str] | None = None) -> Callable[..., Any]:
    def fake(host: str, port: object, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)) for addr in addresses]

    return fake


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://127.0.0.1./",
        "https://0.0.0.0:8443/",
    ],
)
def test_check_url_refuses_internal_ip_literals(url: str) -> None:
    with pytest.raises(UnsafeURLError) as info:
        check_url(url, limits=FetchLimits(), loc=LOC, resolve=False)
    assert info.value.loc == LOC


def test_check_url_refuses_octal_dotted_form() -> None:
    # httpx refuses zero-padded octets outright, so it can never be fetched; it must not pass either way.
    with pytest.raises(InvalidInputError):
        check_url("http://0177.0.0.1/", limits=FetchLimits(), resolve=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/",
        "http://LOCALHOST.:8080/",
        "http://api.localhost/",
        "http://printer.local/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_check_url_refuses_internal_names(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(["93.184.216.34"]))
    with pytest.raises(UnsafeURLError, match="not allowed"):
        check_url(url, limits=FetchLimits())


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://example.com:70/_x", "javascript:alert(1)"],
)
def test_check_url_refuses_schemes(url: str) -> None:
    with pytest.raises(UnsafeURLError, match="scheme"):
        check_url(url, limits=FetchLimits(), resolve=False)


def test_check_url_honours_allowed_schemes() -> None:
    check_url("https://8.8.8.8/", limits=FetchLimits(allowed_schemes=("https",)), resolve=False)
    with pytest.raises(UnsafeURLError, match="scheme"):
        check_url("http://8.8.8.8/", limits=FetchLimits(allowed_schemes=("https",)), resolve=False)


@pytest.mark.parametrize("url", ["http://user:pass@8.8.8.8/", "http://user@8.8.8.8/", "http://evil.com\\@8.8.8.8/"])
def test_check_url_refuses_userinfo(url: str) -> None:
    with pytest.raises(UnsafeURLError, match="credentials"):
        check_url(url, limits=FetchLimits(), resolve=False)


@pytest.mark.parametrize("url", ["http:///a.png", "http://:80/a.png", "http://[::1/"])
def test_check_url_refuses_malformed(url: str) -> None:
    with pytest.raises(InvalidInputError):
        check_url(url, limits=FetchLimits(), resolve=False)


def test_check_url_accepts_public_host(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(["93.184.216.34"], calls))
    check_url("https://images.example.com/a.png", limits=FetchLimits())
    assert calls == ["images.example.com"]


def test_check_url_refuses_if_any_resolved_address_is_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(["93.184.216.34", "10.0.0.7"]))
    with pytest.raises(UnsafeURLError, match=r"10\.0\.0\.7"):
        check_url("https://images.example.com/a.png", limits=FetchLimits(), loc=LOC)
    check_url("https://images.example.com/a.png", limits=FetchLimits(), resolve=False)


def test_check_url_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(InvalidInputError, match="cannot resolve host") as info:
        check_url("https://nope.example/a.png", limits=FetchLimits(), loc=LOC)
    assert info.value.loc == LOC


def test_check_url_hostname_allow_list_skips_address_check(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo(["10.0.0.5"], calls))
    limits = FetchLimits(allow_private_networks=["Cache.Internal", "localhost"])
    check_url("http://cache.internal/a.png", limits=limits)
    check_url("http://localhost:9000/a.png", limits=limits)
    with pytest.raises(UnsafeURLError):
        check_url("http://other.example/a.png", limits=limits)
    assert calls == ["other.example"]


# --------------------------------------------------------------------------- fetch_url (real local server)


def test_fetch_url_downloads_image(local_server: LocalServer) -> None:
    data = fetch_url(f"{local_server.url}/image.png", limits=LOCAL)
    assert data == PNG
    assert probe_image(data, limits=LOCAL) == ("PNG", 4, 3)


def test_fetch_url_refuses_loopback_without_allowance(local_server: LocalServer) -> None:
    before = local_server.paths
    for url in (f"{local_server.url}/image.png", f"http://localhost:{local_server.server.server_port}/"):
        with pytest.raises(UnsafeURLError) as info:
            fetch_url(url, limits=FetchLimits(timeout_seconds=2.0), loc=LOC)
        assert info.value.loc == LOC
    assert local_server.paths == before


def test_fetch_url_follows_redirect_with_checks(local_server: LocalServer) -> None:
    assert fetch_url(f"{local_server.url}/redirect", limits=LOCAL) == PNG
    assert local_server.paths[-2:] == ["/redirect", "/image.png"]


def test_fetch_url_refuses_redirect_to_metadata_service(local_server: LocalServer) -> None:
    with pytest.raises(UnsafeURLError, match=r"169\.254\.169\.254") as info:
        fetch_url(f"{local_server.url}/redirect-metadata", limits=LOCAL, loc=LOC)
    assert info.value.loc == LOC


def test_fetch_url_limits_redirects(local_server: LocalServer) -> None:
    limits = FetchLimits(
        max_bytes=SMALL_LIMIT, timeout_seconds=2.0, max_redirects=0, allow_private_networks=["127.0.0.1/32"]
    )
    with pytest.raises(InvalidInputError, match="too many redirects"):
        fetch_url(f"{local_server.url}/redirect", limits=limits)
    before = len(local_server.paths)
    with pytest.raises(InvalidInputError, match="too many redirects"):
        fetch_url(f"{local_server.url}/redirect-loop", limits=LOCAL)
    assert len(local_server.paths) - before == LOCAL.max_redirects + 1


@pytest.mark.parametrize(("path", "status"), [("/missing", "404"), ("/error", "500")])
def test_fetch_url_http_errors(local_server: LocalServer, path: str, status: str) -> None:
    with pytest.raises(InvalidInputError, match=status) as info:
        fetch_url(f"{local_server.url}{path}?sig=top-secret", limits=LOCAL, loc=LOC)
    assert info.value.loc == LOC
    assert "top-secret" not in str(info.value)


def test_fetch_url_aborts_streamed_body_over_limit(local_server: LocalServer) -> None:
    with pytest.raises(InputTooLargeError):
        fetch_url(f"{local_server.url}/large", limits=LOCAL, loc=LOC)


def test_fetch_url_refuses_declared_length_over_limit(local_server: LocalServer) -> None:
    with pytest.raises(InputTooLargeError, match="declares"):
        fetch_url(f"{local_server.url}/declared-huge", limits=LOCAL)


def test_fetch_url_times_out(local_server: LocalServer) -> None:
    with pytest.raises(InvalidInputError, match="timed out fetching") as info:
        fetch_url(f"{local_server.url}/slow", limits=LOCAL_FAST_TIMEOUT, loc=LOC)
    assert info.value.loc == LOC


def test_fetch_url_enforces_overall_deadline(local_server: LocalServer) -> None:
    # Each byte arrives well within the read timeout; only a total deadline stops the drip.
    with pytest.raises(InvalidInputError, match="timed out fetching"):
        fetch_url(f"{local_server.url}/drip", limits=LOCAL_FAST_TIMEOUT)


def test_fetch_url_uses_given_client_and_leaves_it_open(local_server: LocalServer) -> None:
    seen: list[str] = []
    with httpx.Client(timeout=2.0, event_hooks={"request": [lambda r: seen.append(r.url.path)]}) as client:
        assert fetch_url(f"{local_server.url}/image.png", limits=LOCAL, client=client) == PNG
        assert not client.is_closed
    assert seen == ["/image.png"]


def test_fetch_url_ignores_proxy_environment(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    assert fetch_url(f"{local_server.url}/image.png", limits=LOCAL) == PNG


# --------------------------------------------------------------------------- probe_image / open_image


def test_probe_image_reads_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("probe_image must not decode pixels")

    jpeg = image_bytes("JPEG", (7, 5))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    assert probe_image(jpeg, limits=FetchLimits()) == ("JPEG", 7, 5)


@pytest.mark.parametrize("data", [b"", b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_probe_image_refuses_non_images(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="not a decodable image") as info:
        probe_image(data, limits=FetchLimits(), loc=LOC)
    assert info.value.loc == LOC


def test_probe_image_refuses_formats_outside_allow_list() -> None:
    with pytest.raises(InvalidInputError, match="not a decodable image"):
        probe_image(image_bytes("PPM"), limits=FetchLimits())


def test_probe_and_open_refuse_too_many_pixels() -> None:
    big = image_bytes("PNG", (3000, 3000), mode="1")
    limits = FetchLimits(max_pixels=1_000_000)
    for func in (probe_image, open_image):
        with pytest.raises(InputTooLargeError, match="3000x3000") as info:
            func(big, limits=limits, loc=LOC)
        assert info.value.loc == LOC
    assert probe_image(big, limits=FetchLimits(max_pixels=9_000_000)) == ("PNG", 3000, 3000)


def test_probe_image_converts_pillow_bomb_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputTooLargeError):
        probe_image(image_bytes("PNG", (100, 100)), limits=FetchLimits())


def test_probe_image_converts_pillow_bomb_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InputTooLargeError):
            probe_image(image_bytes("PNG", (40, 40)), limits=FetchLimits())


def test_open_image_loads_fully() -> None:
    image = open_image(image_bytes("WEBP", (6, 4)), limits=FetchLimits())
    assert image.size == (6, 4)
    assert image.getpixel((0, 0)) is not None
    assert not isinstance(image, ImageFile.ImageFile)  # decoded and detached from the source buffer


def test_open_image_applies_exif_orientation() -> None:
    source = Image.new("RGB", (40, 20), "red")
    source.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buf = io.BytesIO()
    source.save(buf, "JPEG", exif=exif, quality=95)

    image = open_image(buf.getvalue(), limits=FetchLimits())
    assert image.size == (20, 40)
    top, bottom = (
        cast(tuple[int, ...], image.getpixel((10, 5))),
        cast(tuple[int, ...], image.getpixel((10, 35))),
    )
    # The left (red) edge is now on top, the right (blue) one at the bottom.
    assert top[0] > 200
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60
    assert image.getexif().get(0x0112, 1) == 1


def test_open_image_refuses_truncated_data() -> None:
    data = image_bytes("PNG", (64, 64), mode="RGB")
    truncated = data[: len(data) // 2]
    assert probe_image(truncated, limits=FetchLimits()) == ("PNG", 64, 64)  # the header is intact
    with pytest.raises(InvalidInputError, match="not a decodable image") as info:
        open_image(truncated, limits=FetchLimits(), loc=LOC)
    assert not isinstance(info.value, InputTooLargeError)
    assert info.value.loc == LOC


# --------------------------------------------------------------------------- safe_relative_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.png", "a.png"),
        ("inputs/2024/cat.png", "inputs/2024/cat.png"),
        ("a//b", "a/b"),
        ("./a/./b", "a/b"),
        ("a/b/", "a/b"),
        ("dir/..hidden/x..png", "dir/..hidden/x..png"),
        ("my images/café.png", "my images/café.png"),
        ("x" * 1024, "x" * 1024),
    ],
)
def test_safe_relative_path_accepts(path: str, expected: str) -> None:
    assert safe_relative_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        ".",
        "./",
        "/etc/passwd",
        "//server/share",
        "C:\\Windows\\win.ini",
        "C:/Windows/win.ini",
        "c:x",
        "\\\\server\\share",
        "a\\b",
        "..",
        "../x",
        "a/../b",
        "a/..",
        "a/ .. /b",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "a\x85b",
        "~/x",
        "~root/x",
        "a/ /b",
        "x" * 1025,
    ],
)
def test_safe_relative_path_refuses(path: str) -> None:
    with pytest.raises(InvalidInputError, match="path") as info:
        safe_relative_path(path, loc=LOC)
    assert info.value.loc == LOC


def test_safe_relative_path_refuses_exactly_the_control_characters() -> None:
    # Unicode category Cc (C0, DEL, C1) and nothing else; the backslash is refused for its own reason.
    refused = set()
    for code in range(0x800):
        try:
            safe_relative_path(f"ab{chr(code)}c")
        except InvalidInputError:
            refused.add(code)
    expected = {code for code in range(0x800) if unicodedata.category(chr(code)) == "Cc"} | {ord("\\")}
    assert refused == expected


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "JPEG"), ("CMYK", "TIFF")],
)
def test_open_image_normalises_deep_and_print_modes(mode: str, fmt: str) -> None:
    size = (24, 16)
    if mode in {"I;16", "I", "F"}:
        peak = {"I;16": 65535, "I": 65535, "F": 1.0}[mode]
        source = Image.new(mode, size, 0)
        source.paste(peak, (0, 0, 12, 16))  # left half at full scale, right half black
    else:
        source = Image.new("CMYK", size, (0, 255, 255, 0))  # pure red in print colours
    buffer = io.BytesIO()
    source.save(buffer, format=fmt)
    image = open_image(buffer.getvalue(), limits=FetchLimits())
    assert image.size == size and image.format == fmt
    if mode in {"I;16", "I", "F"}:
        assert image.mode == "L"
        assert image.getpixel((2, 2)) == 255 and image.getpixel((20, 2)) == 0  # scaled, not clipped to white
    else:
        assert image.mode == "RGB"
        red, green, blue = image.getpixel((5, 5))  # type: ignore[misc]
        assert red > 200 and green < 60 and blue < 60
