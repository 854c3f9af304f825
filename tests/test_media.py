"""Tests of mmrm.rm.media: every accepted form, and one test per refusal.

HTTP tests use real servers on 127.0.0.1 (no mocks of httpx). Host names end in ``.invalid`` (a
name that never resolves) and are answered by an injected resolver, so a test that leaked a real
DNS lookup would fail instead of reaching the network. ``trusted_addresses`` lets one loopback
server ("public") play a public host; a second one ("internal") is a real, untrusted loopback
service that must never be reached.
"""

from __future__ import annotations

import base64
import http.server
import io
import os
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from mmrm.rm.errors import (
    LimitExceeded,
    MediaError,
    MediaFetchError,
    MediaForbidden,
    MmrmError,
    PayloadTooLarge,
)
from mmrm.rm.media import IMAGE_FORMATS, MediaLoader, MediaPolicy, fit_pixels, image_sha256

# -------------------------------------------------------------------------------------------------
# Helpers: images


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 40, h: int = 30) -> Image.Image:
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 7) % 256, (y * 11) % 256, 128) for y in range(h) for x in range(w)])
    return im


def png(w: int = 40, h: int = 30) -> bytes:
    return encode(gradient(w, h), "PNG")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def animated(n: int, fmt: str = "GIF", size: tuple[int, int] = (16, 12)) -> bytes:
    frames = [Image.new("RGB", size, (i * 20 % 256, 0, 255 - i * 20 % 256)) for i in range(n)]
    kw: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **kw)


def animated_gif(n: int) -> bytes:
    return animated(n, "GIF")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR (correct CRC) declaring w x h, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def assert_refused(exc: MmrmError, field: str, limit: Any) -> None:
    """Every refusal names its field and the limit it broke."""
    assert exc.field == field, exc
    assert exc.limit == limit, exc
    assert exc.to_dict()["kind"] == exc.kind


# -------------------------------------------------------------------------------------------------
# Helpers: real HTTP servers on 127.0.0.1

PNG_BODY = png(32, 16)
STOP = threading.Event()  # releases stalled handlers at teardown


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /img.png, /redirect?to=URL, /chain/N, /big, /big-cl, /stall, /drip, /drip-stall, /svg,
    /notimage; anything else is a 404."""

    server: "Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/png", length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append((self.path, self.headers.get("Host")))
        url = urlsplit(self.path)
        path = url.path
        try:
            if path == "/img.png":
                self._send(200, PNG_BODY)
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", parse_qs(url.query)["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path.startswith("/chain/"):
                n = int(path.rsplit("/", 1)[1])
                if n == 0:
                    self._send(200, PNG_BODY)
                else:
                    self.send_response(302)
                    self.send_header("Location", f"/chain/{n - 1}")  # relative: resolved against the host name
                    self.send_header("Content-Length", "0")
                    self.end_headers()
            elif path == "/big":  # no Content-Length: HTTP/1.0 body ends at close
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif path == "/big-cl":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(b"\0" * 1024)
            elif path == "/stall":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.flush()
                STOP.wait(10)
            elif path == "/drip":  # every read succeeds quickly, but the whole body takes 10 s
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                for _ in range(200):
                    if STOP.wait(0.05):
                        break
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            elif path == "/drip-stall":  # bytes for 0.7 s, then silence
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                for _ in range(14):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    if STOP.wait(0.05):
                        break
                STOP.wait(10)
            elif path == "/svg":
                self._send(200, b'<svg xmlns="http://www.w3.org/2000/svg"/>', ctype="image/svg+xml")
            elif path == "/notimage":
                self._send(200, b"this is not an image at all", ctype="image/png")
            else:
                self._send(404, b"not found", ctype="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up on purpose (byte or time limit)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, str | None]]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    """(public, internal): two real servers on 127.0.0.1; only ``public`` will be trusted."""
    STOP.clear()
    made = []
    for _ in range(2):
        srv = Server(("127.0.0.1", 0), Handler)
        srv.requests = []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
    yield made[0], made[1]
    STOP.set()
    for srv in made:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def public(servers: tuple[Server, Server]) -> Server:
    servers[0].requests.clear()
    return servers[0]


@pytest.fixture
def internal(servers: tuple[Server, Server]) -> Server:
    servers[1].requests.clear()
    return servers[1]


def port(srv: Server) -> int:
    return srv.server_address[1]


class FakeDNS:
    """An injected resolver: ``answers[host]`` is a list of IPs, or a function of the call number."""

    def __init__(self, answers: dict[str, list[str] | Callable[[int], list[str]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        ans = self.answers[host]  # KeyError for an unexpected host fails the test loudly
        return ans(len(self.calls)) if callable(ans) else list(ans)


def http_loader(public: Server, dns: FakeDNS, ssl_context: ssl.SSLContext | None = None, **policy: Any) -> MediaLoader:
    policy.setdefault("allow_http", True)
    policy.setdefault("http_timeout_s", 3.0)
    return MediaLoader(
        MediaPolicy(**policy),
        resolver=dns,
        trusted_addresses=frozenset({("127.0.0.1", port(public))}),
        ssl_context=ssl_context,
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ssl.SSLContext, list[str | None]]]:
    """(server, client context trusting it, SNI names seen): HTTPS on 127.0.0.1 with a self-signed
    certificate for ``media.invalid`` only."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "media.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("media.invalid")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    seen: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    server_ctx.sni_callback = lambda sock, sni, ctx: seen.append(sni)  # type: ignore[assignment,misc]
    srv = Server(("127.0.0.1", 0), Handler)
    srv.requests = []
    srv.socket = server_ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, ssl.create_default_context(cafile=str(d / "cert.pem")), seen
    STOP.set()
    srv.shutdown()
    srv.server_close()


# -------------------------------------------------------------------------------------------------
# Happy paths


@pytest.mark.parametrize(
    ("fmt", "mime", "kw"),
    [("PNG", "image/png", {}), ("JPEG", "image/jpeg", {"quality": 95}), ("WEBP", "image/webp", {"lossless": True}),
     ("GIF", "image/gif", {}), ("BMP", "image/bmp", {})],
)
def test_data_uri_formats_decode_to_rgb(fmt: str, mime: str, kw: dict[str, Any]) -> None:
    im = MediaLoader().load_image(data_uri(encode(gradient(), fmt, **kw), mime))
    assert im.mode == "RGB" and im.size == (40, 30)
    if fmt in ("PNG", "WEBP", "BMP"):  # lossless: exact pixels
        assert im.tobytes() == gradient().tobytes()


def test_bare_base64_and_whitespace_and_urlsafe() -> None:
    raw = png()
    b64 = base64.b64encode(raw).decode()
    loader = MediaLoader()
    ref = loader.load_image(b64)
    assert ref.size == (40, 30)
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert image_sha256(loader.load_image(wrapped)) == image_sha256(ref)
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert image_sha256(loader.load_image(urlsafe)) == image_sha256(ref)
    assert loader.load_bytes(b64) == raw


def test_transparent_pixels_become_white() -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = MediaLoader().load_image(data_uri(encode(im, "PNG")))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_gif_as_image_is_first_frame() -> None:
    out = MediaLoader().load_image(data_uri(animated_gif(5), "image/gif"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (0, 0, 255)


def test_local_path_under_root_absolute_and_relative(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(png())
    loader = MediaLoader(MediaPolicy(allowed_roots=[tmp_path]))
    assert loader.load_image(str(tmp_path / "sub" / "a.png")).size == (40, 30)
    assert loader.load_image("sub/a.png").size == (40, 30)


def test_http_fetch_connects_to_checked_address_with_real_host(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    im = http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}/img.png?x=1")
    assert im.size == (32, 16)
    assert dns.calls == [("media.invalid", port(public))]
    assert public.requests == [("/img.png?x=1", f"media.invalid:{port(public)}")]


def test_redirect_is_followed_and_each_hop_resolved_once(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    im = http_loader(public, dns, max_redirects=3).load_image(f"http://media.invalid:{port(public)}/chain/3")
    assert im.size == (32, 16)
    assert len(dns.calls) == 4  # one lookup per hop, none skipped, none doubled
    assert [p for p, _ in public.requests] == ["/chain/3", "/chain/2", "/chain/1", "/chain/0"]


def test_domain_allowlist_suffix_allows_subdomain(public: Server) -> None:
    dns = FakeDNS({"cdn.media.invalid": ["127.0.0.1"]})
    loader = http_loader(public, dns, allowed_domains=[".media.invalid"])
    assert loader.load_image(f"http://cdn.media.invalid:{port(public)}/img.png").size == (32, 16)


def test_dns_rebinding_second_answer_is_never_used(public: Server) -> None:
    # First lookup: the trusted test server. Any later lookup: a forbidden address. The loader must
    # resolve once, validate, and connect to that very address (the host name itself resolves nowhere).
    dns = FakeDNS({"media.invalid": lambda n: ["127.0.0.1"] if n == 1 else ["169.254.169.254"]})
    im = http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}/img.png")
    assert im.size == (32, 16)
    assert len(dns.calls) == 1
    assert len(public.requests) == 1


@pytest.mark.parametrize(
    ("size", "lo", "hi"),
    [((40, 30), 56 * 56, 28 * 28 * 64), ((4000, 3000), 56 * 56, 28 * 28 * 256), ((10, 10), 28 * 28 * 16, 28 * 28 * 64),
     ((1000, 20), 28 * 28 * 4, 28 * 28 * 64), ((28, 56), 28 * 28, 28 * 28 * 4)],
)
def test_fit_pixels_bounds_and_multiples(size: tuple[int, int], lo: int, hi: int) -> None:
    out = fit_pixels(Image.new("RGB", size), min_pixels=lo, max_pixels=hi)
    w, h = out.size
    assert w % 28 == 0 and h % 28 == 0
    assert lo <= w * h <= hi
    assert abs((w / h) / (size[0] / size[1]) - 1) < 0.5  # aspect ratio roughly kept


def test_fit_pixels_returns_same_image_when_it_fits() -> None:
    im = Image.new("RGB", (56, 84))
    assert fit_pixels(im, min_pixels=28 * 28, max_pixels=10**6) is im


def test_video_from_frame_list() -> None:
    frames = [data_uri(encode(Image.new("RGB", (20, 10), (i, 0, 0)), "PNG")) for i in range(5)]
    out = MediaLoader().load_video(frames)
    assert [f.getpixel((0, 0)) for f in out] == [(i, 0, 0) for i in range(5)]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_video_from_animated_image(fmt: str) -> None:
    out = MediaLoader().load_video(data_uri(animated(6, fmt), "image/" + fmt.lower()))
    assert len(out) == 6 and all(f.mode == "RGB" and f.size == (16, 12) for f in out)
    assert [f.getpixel((0, 0))[0] for f in out] == [i * 20 for i in range(6)]


def test_image_sha256_ignores_encoding() -> None:
    loader = MediaLoader()
    a = loader.load_image(data_uri(png()))
    b = loader.load_image(data_uri(encode(gradient(), "WEBP", lossless=True), "image/webp"))
    assert image_sha256(a) == image_sha256(b)
    assert image_sha256(a) != image_sha256(gradient(41, 30))


# -------------------------------------------------------------------------------------------------
# Refusals: decoding and pixel limits


def test_pil_made_decompression_bomb_refused_before_decoding() -> None:
    # 64 Mpx of zeros, about 8 KB on disk: over our 40 Mpx limit, under Pillow's own guard (89 Mpx),
    # so it is our header check that refuses it.
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(bomb) < 20_000
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader().load_image(data_uri(bomb))
    assert time.monotonic() - t0 < 1.0
    assert "max_pixels" in ei.value.message
    assert_refused(ei.value, "image_url", 40_000_000)


def test_pils_own_bomb_guard_is_mapped_when_policy_allows_more() -> None:
    bomb = png_header_only(20000, 20000)
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader(MediaPolicy(max_pixels=10**9)).load_image(data_uri(bomb))
    assert_refused(ei.value, "image_url", 2 * Image.MAX_IMAGE_PIXELS)


def test_header_size_checked_before_decoding() -> None:
    # 8000x8000 declared, a few bytes of data. Refused from the header alone: if the loader decoded
    # first it would fail as truncated (MediaError), as it does once the limit is raised.
    fake = data_uri(png_header_only(8000, 8000))
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader().load_image(fake, field="messages[0].content[1].image_url")
    assert_refused(ei.value, "messages[0].content[1].image_url", 40_000_000)
    with pytest.raises(MediaError) as ei2:
        MediaLoader(MediaPolicy(max_pixels=70_000_000)).load_image(fake)
    assert not isinstance(ei2.value, LimitExceeded)


def test_pixel_limit_from_policy_with_real_png() -> None:
    big = encode(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader(MediaPolicy(max_pixels=1_000_000)).load_image(data_uri(big))
    assert_refused(ei.value, "image_url", 1_000_000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_refused(fmt: str) -> None:
    full = encode(gradient(200, 200), fmt)
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image(data_uri(full[: len(full) // 2]))
    assert not isinstance(ei.value, LimitExceeded)
    assert_refused(ei.value, "image_url", list(IMAGE_FORMATS))


def test_corrupt_png_refused() -> None:
    full = bytearray(encode(gradient(64, 64), "PNG"))
    idat = full.index(b"IDAT")
    full[idat + 20 : idat + 40] = b"\xff" * 20  # damage pixel data; the chunk CRC no longer matches
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image(data_uri(bytes(full)))
    assert_refused(ei.value, "image_url", list(IMAGE_FORMATS))


def test_non_image_bytes_with_image_mime_refused() -> None:
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image(data_uri(b"%PDF-1.7 definitely not a png" * 3, "image/png"))
    assert "not a supported image" in ei.value.message
    assert_refused(ei.value, "image_url", list(IMAGE_FORMATS))


@pytest.mark.parametrize("mime", ["image/svg+xml", "image/png"])
def test_svg_refused(mime: str) -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image(data_uri(svg, mime))
    assert "SVG" in ei.value.message
    assert_refused(ei.value, "image_url", list(IMAGE_FORMATS))


def test_oversize_base64_refused_before_decoding() -> None:
    # The payload is not even valid base64 ('*' at the end): a loader that decoded before checking
    # the size would report invalid base64 instead.
    payload = "A" * 8000 + "*"
    with pytest.raises(PayloadTooLarge) as ei:
        MediaLoader(MediaPolicy(max_bytes=1000)).load_image("data:image/png;base64," + payload)
    assert_refused(ei.value, "image_url", 1000)


def test_bad_base64_refused() -> None:
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image("data:image/png;base64,iVBORw0KGgo*&^%")
    assert_refused(ei.value, "image_url", "base64")


def test_non_base64_data_uri_refused() -> None:
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_image("data:image/png,%89PNG%0D%0A")
    assert_refused(ei.value, "image_url", "data:<mime>;base64,")


def test_animated_gif_with_too_many_frames_refused() -> None:
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader(MediaPolicy(max_frames=4)).load_video(data_uri(animated_gif(5), "image/gif"))
    assert_refused(ei.value, "video", 4)


def test_apng_frame_count_checked_from_header() -> None:
    # A 2-frame APNG whose acTL chunk claims a million frames: refused from the header, at once.
    apng = bytearray(animated(2, "PNG"))
    at = apng.index(b"acTL")
    body = struct.pack(">II", 1_000_000, 0)
    apng[at - 4 : at + 4 + 8 + 4] = png_chunk(b"acTL", body)
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader().load_video(data_uri(bytes(apng)))
    assert_refused(ei.value, "video", 64)


def test_frame_list_over_limit_refused_before_loading() -> None:
    # Frames after the limit are garbage: the count is refused before any frame is loaded.
    frames = [data_uri(png(8, 8))] * 3 + ["not-an-image"]
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader(MediaPolicy(max_frames=3)).load_video(frames)
    assert_refused(ei.value, "video", 3)


def test_video_total_pixel_limit() -> None:
    frames = [data_uri(png(100, 100))] * 3
    with pytest.raises(LimitExceeded) as ei:
        MediaLoader(MediaPolicy(max_video_pixels=25_000)).load_video(frames, field="v")
    assert_refused(ei.value, "v[2]", 25_000)


def test_bad_frame_names_its_index() -> None:
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_video([data_uri(png(8, 8)), data_uri(b"garbage" * 10)])
    assert_refused(ei.value, "video[1]", list(IMAGE_FORMATS))


def test_video_file_without_pyav_refused_clearly() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("PyAV is installed; this checks the message without it")
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64
    with pytest.raises(MediaError) as ei:
        MediaLoader().load_video(data_uri(mp4, "video/mp4"))
    assert "PyAV" in ei.value.message
    assert_refused(ei.value, "video", "list of frame images or an animated GIF/WebP/PNG")


def test_fit_pixels_refuses_extreme_aspect_ratio() -> None:
    with pytest.raises(LimitExceeded) as ei:
        fit_pixels(Image.new("L", (5000, 10)), min_pixels=784, max_pixels=10**6, field="img")
    assert_refused(ei.value, "img", 200)


# -------------------------------------------------------------------------------------------------
# Refusals: local paths


def test_local_paths_refused_without_roots(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    with pytest.raises(MediaForbidden) as ei:
        MediaLoader().load_image(str(tmp_path / "a.png"))
    assert_refused(ei.value, "image_url", [])


def test_path_outside_roots_refused(tmp_path: Path) -> None:
    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir(), other.mkdir()
    (other / "a.png").write_bytes(png())
    with pytest.raises(MediaForbidden) as ei:
        MediaLoader(MediaPolicy(allowed_roots=[root])).load_image(str(other / "a.png"))
    assert_refused(ei.value, "image_url", [str(root)])


def test_dotdot_traversal_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    loader = MediaLoader(MediaPolicy(allowed_roots=[root]))
    for src in ("../secret.png", str(root / ".." / "secret.png"), "sub/../../secret.png"):
        with pytest.raises(MediaForbidden) as ei:
            loader.load_image(src)
        assert_refused(ei.value, "image_url", [str(root)])


def test_symlink_escape_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "dir").symlink_to(tmp_path)
    loader = MediaLoader(MediaPolicy(allowed_roots=[root]))
    for src in ("link.png", str(root / "link.png"), "dir/secret.png"):
        with pytest.raises(MediaForbidden) as ei:
            loader.load_image(src)
        assert_refused(ei.value, "image_url", [str(root)])


def test_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert MediaLoader(MediaPolicy(allowed_roots=[tmp_path])).load_image("b.png").size == (40, 30)


def test_missing_file_is_media_error_not_forbidden(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as ei:
        MediaLoader(MediaPolicy(allowed_roots=[tmp_path])).load_image("nope.png")
    assert not isinstance(ei.value, MediaForbidden)
    assert_refused(ei.value, "image_url", [str(tmp_path)])


def test_oversize_file_refused(tmp_path: Path) -> None:
    data = png(100, 100)
    (tmp_path / "a.png").write_bytes(data)
    loader = MediaLoader(MediaPolicy(allowed_roots=[tmp_path], max_bytes=len(data)))
    assert loader.load_image("a.png").size == (100, 100)  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge) as ei:
        MediaLoader(MediaPolicy(allowed_roots=[tmp_path], max_bytes=len(data) - 1)).load_image("a.png")
    assert_refused(ei.value, "image_url", len(data) - 1)


def test_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(MediaError) as ei:  # must not hang waiting for a writer
        MediaLoader(MediaPolicy(allowed_roots=[tmp_path])).load_image("pipe.png")
    assert_refused(ei.value, "image_url", [str(tmp_path)])


# -------------------------------------------------------------------------------------------------
# Refusals: URLs and addresses


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "FILE:/etc/hosts", "ftp://example.invalid/a.png", "gopher://x.invalid/"]
)
def test_non_http_schemes_refused_always(url: str) -> None:
    loader = MediaLoader(MediaPolicy(allowed_roots=[Path("/")], allow_http=True))
    with pytest.raises(MediaForbidden) as ei:
        loader.load_image(url)
    assert_refused(ei.value, "image_url", ["http", "https"])


def test_http_disabled_by_default(public: Server) -> None:
    loader = MediaLoader(resolver=FakeDNS({}), trusted_addresses=frozenset({("127.0.0.1", port(public))}))
    with pytest.raises(MediaForbidden) as ei:
        loader.load_image(f"http://127.0.0.1:{port(public)}/img.png")
    assert_refused(ei.value, "image_url", "allow_http=false")
    assert public.requests == []


def test_domain_allowlist_refuses_other_hosts(public: Server) -> None:
    dns = FakeDNS({"other.invalid": ["127.0.0.1"], "media.invalid.evil.invalid": ["127.0.0.1"]})
    loader = http_loader(public, dns, allowed_domains=["media.invalid", ".cdn.invalid"])
    for host in ("other.invalid", "media.invalid.evil.invalid", "cdn.invalid"):
        with pytest.raises(MediaForbidden) as ei:
            loader.load_image(f"http://{host}:{port(public)}/img.png")
        assert_refused(ei.value, "image_url", ["media.invalid", ".cdn.invalid"])
    assert dns.calls == [] and public.requests == []


def test_untrusted_loopback_resolution_refused(public: Server, internal: Server) -> None:
    # The internal server is real and would answer: only the address check stops the fetch.
    dns = FakeDNS({"evil.invalid": ["127.0.0.1"]})
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, dns).load_image(f"http://evil.invalid:{port(internal)}/img.png")
    assert_refused(ei.value, "image_url", "public (global unicast) addresses only")
    assert internal.requests == []


@pytest.mark.parametrize(
    "addr",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200", "168.63.129.16", "0.0.0.0",
     "224.0.0.1", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "fd00:ec2::254", "fe80::1", "2002:7f00:1::",
     "64:ff9b::a9fe:a9fe", "127.0.0.2"],
)
def test_forbidden_resolved_addresses_refused(public: Server, addr: str) -> None:
    dns = FakeDNS({"host.invalid": [addr]})
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, dns).load_image(f"http://host.invalid:{port(public)}/img.png")
    assert_refused(ei.value, "image_url", "public (global unicast) addresses only")
    assert public.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://[::1]:{p}/img.png", "http://[::ffff:127.0.0.1]:{p}/img.png",
     "http://[fd00:ec2::254]/", "http://127.0.0.1:{p}/img.png", "https://10.1.2.3/"],
)
def test_forbidden_literal_addresses_refused(public: Server, internal: Server, url: str) -> None:
    dns = FakeDNS({})
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, dns).load_image(url.format(p=port(internal)))
    assert_refused(ei.value, "image_url", "public (global unicast) addresses only")
    assert dns.calls == [] and internal.requests == []


def test_metadata_host_name_refused(public: Server) -> None:
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, FakeDNS({})).load_image("http://metadata.google.internal/computeMetadata/v1/")
    assert_refused(ei.value, "image_url", "public hosts only")


def test_mixed_answer_with_one_forbidden_address_refused(public: Server, internal: Server) -> None:
    # A public-looking first answer does not excuse a loopback second one (the untrusted internal
    # server); the whole answer is refused before anything is connected to.
    dns = FakeDNS({"media.invalid": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, dns).load_image(f"http://media.invalid:{port(internal)}/img.png")
    assert_refused(ei.value, "image_url", "public (global unicast) addresses only")
    assert internal.requests == [] and public.requests == []


def test_credentials_in_url_refused(public: Server) -> None:
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, FakeDNS({})).load_image(f"http://user:pw@media.invalid:{port(public)}/img.png")
    assert_refused(ei.value, "image_url", "no userinfo")


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:{p}/img.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:{p}/img.png",
     "file:///etc/passwd", "http://inner.invalid:{p}/img.png"],
)
def test_redirect_into_forbidden_target_refused(public: Server, internal: Server, target: str) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"], "inner.invalid": ["10.0.0.7"]})
    to = target.format(p=port(internal))
    with pytest.raises(MediaForbidden) as ei:
        http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}/redirect?to={to}")
    assert ei.value.field == "image_url" and ei.value.limit is not None
    assert [p for p, _ in public.requests] == [f"/redirect?to={to}"]
    assert internal.requests == []


def test_redirect_out_of_domain_allowlist_refused(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"], "other.invalid": ["127.0.0.1"]})
    loader = http_loader(public, dns, allowed_domains=["media.invalid"])
    to = f"http://other.invalid:{port(public)}/img.png"
    with pytest.raises(MediaForbidden) as ei:
        loader.load_image(f"http://media.invalid:{port(public)}/redirect?to={to}")
    assert_refused(ei.value, "image_url", ["media.invalid"])
    assert len(public.requests) == 1


def test_too_many_redirects_refused(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    with pytest.raises(MediaFetchError) as ei:
        http_loader(public, dns, max_redirects=2).load_image(f"http://media.invalid:{port(public)}/chain/3")
    assert_refused(ei.value, "image_url", 2)
    assert len(public.requests) == 3  # the first request and two redirects, then it stops


def test_streamed_body_over_byte_limit_refused(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    with pytest.raises(PayloadTooLarge) as ei:
        http_loader(public, dns, max_bytes=100_000).load_image(f"http://media.invalid:{port(public)}/big")
    assert_refused(ei.value, "image_url", 100_000)


def test_content_length_over_byte_limit_refused(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    with pytest.raises(PayloadTooLarge) as ei:
        http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}/big-cl")
    assert_refused(ei.value, "image_url", 20 * 1024 * 1024)


@pytest.mark.parametrize("path", ["/stall", "/drip", "/drip-stall"])
def test_slow_server_hits_total_time_limit(public: Server, path: str) -> None:
    # /stall never sends a body. /drip sends a byte every 50 ms, so no single read times out and
    # only a deadline over the whole fetch stops it. /drip-stall goes silent after 0.7 s: the read
    # then waiting must be cut at the deadline (0.8 s), not run on to its own read timeout (1.5 s).
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    t0 = time.monotonic()
    with pytest.raises(MediaFetchError) as ei:
        http_loader(public, dns, http_timeout_s=0.8).load_image(f"http://media.invalid:{port(public)}{path}")
    assert time.monotonic() - t0 < 1.3
    assert_refused(ei.value, "image_url", 0.8)


def test_http_error_status_refused(public: Server) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    with pytest.raises(MediaFetchError) as ei:
        http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}/missing.png")
    assert "404" in ei.value.message
    assert_refused(ei.value, "image_url", "HTTP 2xx")


@pytest.mark.parametrize(("path", "needle"), [("/svg", "SVG"), ("/notimage", "not a supported image")])
def test_http_svg_and_non_image_refused(public: Server, path: str, needle: str) -> None:
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    with pytest.raises(MediaError) as ei:
        http_loader(public, dns).load_image(f"http://media.invalid:{port(public)}{path}")
    assert needle in ei.value.message
    assert_refused(ei.value, "image_url", list(IMAGE_FORMATS))


def test_unresolvable_host_is_fetch_error(public: Server) -> None:
    def nxdomain(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    loader = MediaLoader(MediaPolicy(allow_http=True), resolver=nxdomain)
    with pytest.raises(MediaFetchError) as ei:
        loader.load_image("http://nowhere.invalid/a.png")
    assert_refused(ei.value, "image_url", "resolvable host")


def test_policy_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        MediaPolicy(max_bytez=1)  # type: ignore[call-arg]


# -------------------------------------------------------------------------------------------------
# HTTPS: connect to the checked IP, verify the certificate for the real host name


def test_https_uses_sni_and_verifies_the_real_host(tls: tuple[Server, ssl.SSLContext, list[str | None]]) -> None:
    srv, ctx, seen = tls
    seen.clear()
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    im = http_loader(srv, dns, ssl_context=ctx).load_image(f"https://media.invalid:{port(srv)}/img.png")
    assert im.size == (32, 16)
    assert seen == ["media.invalid"]
    assert srv.requests[-1] == ("/img.png", f"media.invalid:{port(srv)}")


def test_https_certificate_for_another_name_refused(tls: tuple[Server, ssl.SSLContext, list[str | None]]) -> None:
    srv, ctx, _ = tls
    dns = FakeDNS({"other.invalid": ["127.0.0.1"]})  # same server, but its certificate is not for this name
    with pytest.raises(MediaFetchError) as ei:
        http_loader(srv, dns, ssl_context=ctx).load_image(f"https://other.invalid:{port(srv)}/img.png")
    assert "certificate" in ei.value.message.lower()
    assert_refused(ei.value, "image_url", "reachable host")


def test_https_stall_hits_total_time_limit(tls: tuple[Server, ssl.SSLContext, list[str | None]]) -> None:
    srv, ctx, _ = tls
    dns = FakeDNS({"media.invalid": ["127.0.0.1"]})
    t0 = time.monotonic()
    with pytest.raises(MediaFetchError) as ei:
        loader = http_loader(srv, dns, ssl_context=ctx, http_timeout_s=0.8)
        loader.load_image(f"https://media.invalid:{port(srv)}/drip-stall")
    assert time.monotonic() - t0 < 1.3
    assert_refused(ei.value, "image_url", 0.8)


def test_ssl_context_must_verify() -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    with pytest.raises(ValueError):
        MediaLoader(ssl_context=ctx)


# -------------------------------------------------------------------------------------------------
# The one source classifier and the one encoder


@pytest.mark.parametrize(
    ("source", "kind", "scheme"),
    [
        ("data:image/png;base64,iVBO", "data_uri", "data"),
        ("  DATA:image/png;base64,iVBO", "data_uri", "data"),
        ("https://example.com/a.png", "url", "https"),
        ("FILE:///etc/passwd", "url", "file"),
        ("mailto:a@b.c", "url", "mailto"),
        ("C:/images/a.png", "path", None),  # a one-letter scheme is a Windows drive
        ("images/cat.png", "path", None),
        ("./" + "A" * 80, "path", None),  # the "." makes it a path
        ("A" * 63, "path", None),  # shorter than the bare-base64 minimum
        ("A" * 64, "base64", None),
        ("iVBORw0KGgo" + "A" * 60 + "\n" + "B" * 10 + "==", "base64", None),
    ],
)
def test_classify_source(source: str, kind: str, scheme: str | None) -> None:
    from mmrm.rm.media import classify_source

    got = classify_source(source)
    assert (got.kind, got.scheme, got.text) == (kind, scheme, source.strip())


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_classify_source_refuses_empty_and_non_strings(bad: Any) -> None:
    from mmrm.rm.media import classify_source

    with pytest.raises(MediaError) as ei:
        classify_source(bad, field="x")
    assert ei.value.field == "x"


@pytest.mark.parametrize(
    ("fmt", "mime", "kw"),
    [("PNG", "image/png", {}), ("JPEG", "image/jpeg", {}), ("GIF", "image/gif", {}),
     ("WEBP", "image/webp", {"lossless": True}), ("BMP", "image/bmp", {})],
)
def test_to_data_uri_keeps_bytes_and_names_their_type(fmt: str, mime: str, kw: dict[str, Any]) -> None:
    from mmrm.rm.media import to_data_uri

    raw = encode(gradient(), fmt, **kw)
    assert to_data_uri(raw) == data_uri(raw, mime)
    assert to_data_uri(bytearray(raw)) == data_uri(raw, mime)


def test_to_data_uri_of_unknown_bytes_and_video() -> None:
    from mmrm.rm.media import to_data_uri

    assert to_data_uri(b"hello").startswith("data:application/octet-stream;base64,")
    assert to_data_uri(b"\x00\x00\x00\x18ftypmp42").startswith("data:video/mp4;base64,")


def test_to_data_uri_of_images_is_lossless_and_keeps_alpha() -> None:
    from mmrm.rm.media import to_data_uri

    im = gradient()
    assert MediaLoader().load_image(to_data_uri(im)).tobytes() == im.tobytes()
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 0))  # fully transparent: shown white
    uri = to_data_uri(rgba)
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).mode == "RGBA"
    assert MediaLoader().load_image(uri).getpixel((0, 0)) == (255, 255, 255)


def test_to_data_uri_converts_modes_the_format_cannot_store() -> None:
    from mmrm.rm.media import to_data_uri

    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red ink on paper
    assert MediaLoader().load_image(to_data_uri(cmyk)).getpixel((0, 0)) == (255, 0, 0)
    jpeg = to_data_uri(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), format="JPEG", quality=95)
    assert jpeg.startswith("data:image/jpeg;base64,")
    r, g, b = MediaLoader().load_image(jpeg).getpixel((4, 4))
    assert min(r, g, b) >= 250  # transparent became white, not black


def test_to_data_uri_refuses_what_it_cannot_encode() -> None:
    from mmrm.rm.media import to_data_uri

    with pytest.raises(ValueError):
        to_data_uri(gradient(), format="TIFF")
    with pytest.raises(TypeError):
        to_data_uri("data:image/png;base64,iVBO")  # type: ignore[arg-type]
