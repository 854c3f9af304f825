"""Hostile media through the real service: every input is sent inside a real ``/v1/score`` request.

tests/test_media.py proves each refusal at the loader; here each one must come back over HTTP as a
clear 4xx (the error envelope names the kind, the item's field and the limit), the service must
answer the NEXT valid request normally, and no hostile URL may ever reach the host it names. Two
applications are used: the main one (``http(s)`` media switched off, the default) and "rel"
(``allow_http: true``, a 256 KiB media byte cap), where loopback, private and metadata addresses
must be refused by the address rules themselves, with no test resolver injected anywhere.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from helpers import image_array, png_bytes

pytestmark = pytest.mark.slow


# -------------------------------------------------------------------------------------------------
# The corpus (generated here, nothing shipped)


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_declaring(w: int, h: int, pixels: bytes | None = None) -> bytes:
    """A well-formed greyscale PNG declaring w x h; ``pixels`` (already filtered rows) or a few bytes."""
    data = zlib.compress(pixels if pixels is not None else b"\x00" * 64, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _bomb() -> bytes:
    """A REAL decompression bomb: 7000 x 7000 all-black greyscale (49 MP > 40 MP) in about 50 KB."""
    n = 7000
    comp = zlib.compressobj(9)
    row = b"\x00" * (n + 1)  # filter byte + pixels
    data = b"".join(comp.compress(row) for _ in range(n)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _animated_gif(n: int, size: tuple[int, int] = (8, 8)) -> bytes:
    # Frames must differ, or Pillow merges them while saving.
    frames = [Image.new("P", size, i % 256) for i in range(n)]
    for i, f in enumerate(frames):
        f.putpixel((i % size[0], (i // size[0]) % size[1]), (i + 7) % 256)
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=20, loop=0)


GOOD = png_bytes(image_array(40, 40, seed=1))
JPEG = _encode(Image.fromarray(image_array(64, 64, seed=2)), "JPEG", quality=90)
WEBP = _encode(Image.fromarray(image_array(64, 64, seed=3)), "WEBP", quality=80)


def _corrupt_png() -> bytes:
    b = bytearray(GOOD)
    b[20] ^= 0xFF  # inside IHDR: the CRC no longer matches
    return bytes(b)


# name -> (source string, allowed statuses, allowed error kinds)
HOSTILE_DATA: dict[str, tuple[str, set[int], set[str]]] = {
    "truncated_png": (_uri(GOOD[: len(GOOD) // 2]), {422}, {"invalid_media"}),
    "truncated_jpeg": (_uri(JPEG[: len(JPEG) // 2], "image/jpeg"), {422}, {"invalid_media"}),
    "truncated_webp": (_uri(WEBP[: len(WEBP) // 2], "image/webp"), {422}, {"invalid_media"}),
    "corrupt_png": (_uri(_corrupt_png()), {422}, {"invalid_media"}),
    "corrupt_jpeg": (_uri(b"\xff\xd8\xff" + os.urandom(2000), "image/jpeg"), {422}, {"invalid_media"}),
    "corrupt_webp": (_uri(b"RIFF" + struct.pack("<I", 4000) + b"WEBP" + os.urandom(4000), "image/webp"), {422},
                     {"invalid_media"}),
    "decompression_bomb": (_uri(_bomb()), {422}, {"limit_exceeded"}),
    "huge_header_tiny_body": (_uri(_png_declaring(100_000, 100_000)), {422}, {"limit_exceeded"}),
    "extreme_aspect_ratio": (_uri(_png_declaring(5000, 1, b"\x00" + b"\x00" * 5000)), {422}, {"limit_exceeded"}),
    "elf_behind_png_mime": (_uri(b"\x7fELF\x02\x01\x01" + b"\x00" * 200), {422}, {"invalid_media"}),
    "pdf_behind_jpeg_mime": (_uri(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 300, "image/jpeg"), {422}, {"invalid_media"}),
    "html_as_bare_base64": (base64.b64encode(b"<html><body>" + b"x" * 200 + b"</body></html>").decode(), {422},
                            {"invalid_media"}),
    "svg": (_uri(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>1</script></svg>',
                 "image/svg+xml"), {422}, {"invalid_media"}),
    "svg_behind_png_mime": (_uri(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>'), {422},
                            {"invalid_media"}),
    "bad_base64": ("data:image/png;base64,@@@not*base64@@@", {422}, {"invalid_media"}),
    "percent_encoded_data_uri": ("data:image/png,%89PNG%0D%0A", {422}, {"invalid_media"}),
    "empty_source": ("   ", {422}, {"invalid_media", "invalid_input"}),
    "mp4_without_decoder": (_uri(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500), "video/mp4"), {422}, {"invalid_media"}),
}

FILE_URLS = ["file:///etc/passwd", "FILE:///etc/passwd", "file:/etc/passwd", "file://localhost/etc/passwd",
             " file:///proc/self/environ", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:70/_x",
             "jar:file:///x!/y.png"]
PATHS = ["../../../../../../etc/passwd", "/etc/passwd", "/proc/self/environ", "./../../etc/hostname",
         "sub/../../../etc/passwd"]


def _item(part: dict, text: str = "What is shown?") -> dict:
    return {"prompt": [{"role": "user", "content": [part, {"type": "text", "text": text}]}], "response": "A picture."}


def _image(src: str) -> dict:
    return {"type": "image_url", "image_url": {"url": src}}


def _score(app: dict, model: str, item: dict, timeout: float = 60, **extra: object) -> httpx.Response:
    return httpx.post(app["url"] + "/v1/score", json={"model": model, "items": [item], **extra}, headers=app["headers"],
                      timeout=timeout)


def _assert_refused_then_serving(app: dict, model: str, item: dict, statuses: set[int], kinds: set[str],
                                 field_prefix: str = "items[0].prompt[0].content[0]") -> dict:
    """The hostile item beside a good one: 200, the hostile item invalid (kind, field, limit), the
    good one scored; with ``on_item_error: fail`` the request answers one of ``statuses``."""
    good = _item(_image(_uri(GOOD)))
    t0 = time.monotonic()
    r = httpx.post(app["url"] + "/v1/score", json={"model": model, "items": [item, good]}, headers=app["headers"],
                   timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert time.monotonic() - t0 < 30
    bad, fine = r.json()["data"]
    assert bad["value"] is None and fine["value"] is not None, r.text[:500]
    err = {"kind": bad["error_kind"], "message": bad["invalid"], "field": bad["field"], "limit": bad["limit"]}
    assert err["kind"] in kinds, err
    assert err["message"] and err["field"] and err["field"].startswith(field_prefix), err
    assert err["limit"] is not None, err
    r = _score(app, model, item, on_item_error="fail")
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.json()["error"]["kind"] == err["kind"] and r.json()["error"]["field"] == err["field"], r.text[:500]
    ok = _score(app, model, good)
    assert ok.status_code == 200 and ok.json()["data"][0]["value"] is not None, ok.text[:500]
    return err


@pytest.mark.parametrize("name", sorted(HOSTILE_DATA))
def test_hostile_image_bytes_are_clear_4xx_and_service_keeps_serving(service: dict, name: str) -> None:
    src, statuses, kinds = HOSTILE_DATA[name]
    _assert_refused_then_serving(service, "tiny", _item(_image(src)), statuses, kinds)


def test_oversize_base64_is_413_before_decoding(rel_service: dict) -> None:
    # rel's media cap is 256 KiB: a 1 MiB payload (bare base64 and data URI) is refused by its length.
    big = base64.b64encode(os.urandom(1024 * 1024)).decode()
    for src in (big, "data:image/png;base64," + big):
        err = _assert_refused_then_serving(rel_service, "tiny2", _item(_image(src)), {413}, {"payload_too_large"})
        assert err["limit"] == 256 * 1024
    # and a request body over the service's own limit is a 413 before anything is parsed
    r = httpx.post(rel_service["url"] + "/v1/score", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                   headers={**rel_service["headers"], "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["limit"] == 8 * 1024 * 1024


def test_video_with_too_many_frames(service: dict) -> None:
    frame = _uri(png_bytes(image_array(8, 8, seed=4)))
    video = {"type": "video", "video": [frame] * 65}
    err = _assert_refused_then_serving(service, "tiny", _item(video), {422}, {"limit_exceeded"})
    assert err["limit"] == 64
    # an animated GIF with thousands of frames, sent as a video: counted from the headers, refused
    t0 = time.monotonic()
    gif = _uri(_animated_gif(3000), "image/gif")
    err = _assert_refused_then_serving(service, "tiny", _item({"type": "video", "video": gif}), {422},
                                       {"limit_exceeded"})
    assert err["limit"] == 64 and time.monotonic() - t0 < 30
    # the same file as a still image: only its first frame is decoded (bounded work), and it scores
    r = _score(service, "tiny", _item(_image(gif)))
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("url", FILE_URLS)
def test_file_and_other_schemes_refused(service: dict, rel_service: dict, url: str) -> None:
    for app, model in ((service, "tiny"), (rel_service, "tiny2")):
        _assert_refused_then_serving(app, model, _item(_image(url)), {422}, {"media_forbidden"})


def test_path_traversal_and_symlink_escapes_refused(service: dict) -> None:
    root: Path = service["media_root"]
    (root / "rel_ok.png").write_bytes(GOOD)
    outside = root.parent / "rel_outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.png").write_bytes(GOOD)  # a VALID image: only the policy can refuse it
    for name, target in (("rel_link.png", outside / "secret.png"), ("rel_dirlink", outside),
                         ("rel_etc_link", Path("/etc/hostname"))):
        if not (root / name).is_symlink():
            (root / name).symlink_to(target)
    r = _score(service, "tiny", _item(_image("rel_ok.png")))
    assert r.status_code == 200, r.text  # a path under the root is fine
    srcs = [*PATHS, str(outside / "secret.png"), f"{root}/../rel_outside/secret.png", "rel_link.png",
            "rel_dirlink/secret.png", str(root / "rel_link.png"), "rel_etc_link"]
    for src in srcs:
        _assert_refused_then_serving(service, "tiny", _item(_image(src)), {422}, {"media_forbidden"})
    os.mkfifo(root / "rel_fifo.png") if not (root / "rel_fifo.png").exists() else None
    _assert_refused_then_serving(service, "tiny", _item(_image("rel_fifo.png")), {422}, {"invalid_media"})


def test_http_urls_refused_when_http_is_off(service: dict, stub_server) -> None:
    before = len(stub_server.requests)
    for url in (f"{stub_server.url}/img.png", "https://example.com/cat.png", "http://93.184.216.34/cat.png"):
        err = _assert_refused_then_serving(service, "tiny", _item(_image(url)), {422}, {"media_forbidden"})
        assert err["limit"] == "allow_http=false"
    assert len(stub_server.requests) == before


def test_loopback_private_metadata_urls_refused_with_http_on(rel_service: dict, stub_server) -> None:
    """With http(s) media ON and no resolver injected, addresses decide: none of these is fetched.

    The stub at 127.0.0.1 serves a VALID image at /img.png, so only the address rules can refuse it;
    it records every request it gets, and must get none. Numeric host spellings (127.1, 0x7f000001,
    2130706433) and ``localhost`` go through the system resolver and are refused for what they resolve
    to; redirects are refused at the first hop (itself loopback). Redirects from a public host into a
    private one, and DNS rebinding, need a resolver that lies: tests/test_media.py covers them."""
    p = stub_server.port
    urls = [f"http://127.0.0.1:{p}/img.png", f"http://localhost:{p}/img.png", f"http://[::1]:{p}/img.png",
            f"http://[::ffff:127.0.0.1]:{p}/img.png", f"http://127.1:{p}/img.png", f"http://0x7f000001:{p}/img.png",
            f"http://2130706433:{p}/img.png", f"http://0.0.0.0:{p}/img.png",
            f"http://127.0.0.1:{p}/redirect?to=http://169.254.169.254/latest/meta-data/",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://[fd00:ec2::254]/latest/meta-data/", "http://metadata.google.internal/computeMetadata/v1/",
            "http://100.100.100.200/latest/meta-data/", "http://10.0.0.1/x.png", "http://192.168.1.1/x.png",
            "http://172.16.0.1/x.png", "http://[fe80::1]/x.png", "https://127.0.0.1:1/x.png",
            f"http://user:pass@127.0.0.1:{p}/img.png"]
    before = [r for r in stub_server.requests if r[0] == "GET"]
    for url in urls:
        err = _assert_refused_then_serving(rel_service, "tiny2", _item(_image(url)), {422}, {"media_forbidden"})
        assert url.startswith("http") and err["kind"] == "media_forbidden", (url, err)
    assert [r for r in stub_server.requests if r[0] == "GET"] == before, "a hostile URL reached the stub host"
