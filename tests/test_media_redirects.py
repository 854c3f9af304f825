"""Redirects to anything but http(s) are typed refusals (RELIABILITY.md, "redirect targets").

A real HTTP server on 127.0.0.1 answers ``/to?u=<target>`` with a 302 to ``<target>``, exactly as
given (no re-encoding), and counts what it is asked. The loader has http on; the host name ends in
``.invalid`` and is answered by an injected resolver, so nothing leaves the machine. Before the
fetcher followed redirects itself, httpx parsed each ``Location`` into a next request and raised an
untyped ``InvalidURL`` for ``data:``, ``mailto:`` and the like (a 500 in the service).
"""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from PIL import Image

from mmrm.rm.errors import MediaError, MediaFetchError, MediaForbidden
from mmrm.rm.media import MediaLoader, MediaPolicy


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.paths.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == "/img.png":
            self._answer(200, PNG, [("Content-Type", "image/png")])
        elif parts.path == "/to":
            self._answer(302, b"", [("Location", parse_qs(parts.query)["u"][0])])
        else:
            self._answer(404, b"")

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _loader(srv: _Server) -> MediaLoader:
    port = srv.server_address[1]
    return MediaLoader(
        MediaPolicy(allow_http=True),
        resolver=lambda host, _port: ["127.0.0.1"] if host == "media.invalid" else [],
        trusted_addresses=frozenset({("127.0.0.1", port)}),
    )


def _via_redirect(srv: _Server, target: str) -> str:
    return f"http://media.invalid:{srv.server_address[1]}/to?u={quote(target, safe='')}"


NON_HTTP_TARGETS = [
    "data:image/png;base64," + base64.b64encode(PNG).decode(),  # an image, but not fetched from the web
    "data:,hello",
    "mailto:someone@example.com",
    "file:///etc/passwd",
    "ftp://example.com/img.png",
    "gopher://example.com/",
    "javascript:alert(1)",
    "about:blank",
    "tel:+15551234567",
    "urn:isbn:0451450523",
    "blob:http://example.com/1",
    "ws://example.com/img.png",
    "x-custom:thing",
]


@pytest.mark.parametrize("target", NON_HTTP_TARGETS)
def test_redirect_to_a_non_http_scheme_is_media_forbidden(server: _Server, target: str) -> None:
    with pytest.raises(MediaForbidden) as ei:
        _loader(server).load_image(_via_redirect(server, target), field="messages[0].content[1].image_url")
    err = ei.value
    assert err.field == "messages[0].content[1].image_url"
    assert err.limit == ["http", "https"]
    scheme = target.split(":", 1)[0]
    assert f"redirect to a {scheme!r} URL" in err.message
    assert len(server.paths) == 1  # the redirect was asked for; nothing after it


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("http://[::1", MediaFetchError),  # unbalanced IPv6 bracket
        ("http://[zz]/img.png", MediaFetchError),  # not an IPv6 address
        ("http://xn--/img.png", MediaError),  # an invalid IDNA label (httpx raised IDNAError)
        ("http://exa mple.com/img.png", MediaError),  # a space in the host
        ("http://media.invalid:99999/img.png", MediaError),  # a port out of range
    ],
)
def test_malformed_redirect_targets_are_typed_media_errors(server: _Server, target: str, kind: type) -> None:
    with pytest.raises(MediaError) as ei:
        _loader(server).load_image(_via_redirect(server, target))
    assert type(ei.value) is kind
    assert ei.value.field == "image_url" and ei.value.limit is not None


def test_relative_and_same_host_redirects_are_still_followed(server: _Server) -> None:
    port = server.server_address[1]
    for target in ("/img.png", "img.png", f"http://media.invalid:{port}/img.png", f"//media.invalid:{port}/img.png"):
        server.paths.clear()
        im = _loader(server).load_image(_via_redirect(server, target))
        assert im.size == (8, 6) and im.getpixel((0, 0)) == (10, 200, 30)
        assert [p.split("?")[0] for p in server.paths] == ["/to", "/img.png"]
