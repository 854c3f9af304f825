"""Media loading with limits: the one place that turns a media source string into RGB pixels.

Accepted forms of a media source (this is the list; other modules point here). A source string is
stripped of surrounding whitespace and then recognised in this order, first match wins:

1. **Data URI** -- ``data:[<mime>][;<param>]*;base64,<payload>``. Only base64 data URIs are
   accepted (percent-encoded ones are refused); ``image/svg+xml`` is refused.
2. **URL** -- anything starting with ``<scheme>:`` (a letter, then letters, digits, ``+ - .``).
   Only ``http://`` and ``https://`` are fetched, and only when :attr:`MediaPolicy.allow_http` is
   on. Every other scheme (``file://``, ``ftp://``, ``gopher:``, ...) is refused with
   :class:`~mmrm.rm.errors.MediaForbidden`. (So a local path whose first segment contains ``:``
   is read as a URL and refused; write it as ``./name``.)
3. **Bare base64** -- at least 64 characters, all from the base64 alphabet (standard or URL-safe,
   optional ``=`` padding, whitespace ignored). Base64 has no ``.`` or ``:``, so paths with a file
   extension and URLs never match; a long extension-less path made only of base64 characters is
   read as base64 (write it as ``./name``: the ``.`` makes it a path).
4. **Local path** -- absolute, or relative to the allowed roots (tried in order). Only files under
   :attr:`MediaPolicy.allowed_roots` are read; with no roots, local paths are refused.

Formats: only raster images are decoded, identified by their magic bytes (never by a declared MIME
type or file name): PNG, JPEG, WebP, GIF and BMP. SVG and anything else are refused. A still image
is its first frame; an animated GIF/WebP/PNG used as a *video* gives all its frames. Video files
(MP4/MOV, Matroska/WebM, AVI) need the optional PyAV package. Every image comes back as RGB
(transparent pixels become white, as Qwen2-VL's own loader does).

Limits (see :class:`MediaPolicy`): encoded bytes per item (base64 is measured before decoding,
HTTP bodies while streaming), pixels and aspect ratio per image read from the header *before*
decoding (stops decompression bombs), frames and total pixels per video, and for HTTP a total time budget and a
redirect limit. Resizing into a model's pixel range is a separate step, :func:`fit_pixels`.

Every refusal raises a typed error from :mod:`mmrm.rm.errors` (``MediaError``, ``MediaForbidden``,
``LimitExceeded``, ``PayloadTooLarge``, ``MediaFetchError``) whose ``field`` names the input and
whose ``limit`` names the rule it broke, so the service can answer with a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import ipaddress
import math
import os
import re
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmrm.rm.errors import LimitExceeded, MediaError, MediaFetchError, MediaForbidden, PayloadTooLarge

__all__ = [
    "IMAGE_FORMATS",
    "MediaLoader",
    "MediaPolicy",
    "Resolver",
    "fit_pixels",
    "image_sha256",
]

#: Raster formats that are decoded (Pillow's format names). Everything else is refused.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

#: Container formats handed to PyAV for video files (PyAV/FFmpeg demuxer names).
VIDEO_CONTAINERS: tuple[str, ...] = ("mp4", "matroska", "avi")

#: ``resolver(host, port) -> [ip, ...]``; the default wraps :func:`socket.getaddrinfo`.
Resolver = Callable[[str, int], list[str]]

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_MIB = 1024 * 1024
_MIN_BARE_BASE64 = 64  # a 1x1 PNG is 67 bytes = 92 base64 characters; shorter strings are paths
_MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses more extreme shapes too

# Cloud metadata endpoints. Most are already non-global (link-local / ULA / shared space), but
# some are ordinary public addresses (Azure's wireserver), so they are listed explicitly.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean IMDS
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "168.63.129.16",  # Azure wireserver (a public address!)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
    )
)
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BASE64_CHARS_RE = re.compile(r"[A-Za-z0-9+/\-_=\s]+")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
_WHITESPACE_RE = re.compile(r"\s")
_HOSTNAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?)*")

# Pillow signals malformed input with these (plugins raise SyntaxError/struct.error on bad headers,
# decoders OSError on truncated or corrupt data, EOFError past the last frame).
_PIL_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class MediaPolicy(BaseModel):
    """Limits and permissions for loading media; the defaults are the safe ones.

    Attributes are documented per field. Local paths and HTTP are off by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(
        default=20 * _MIB,
        gt=0,
        description="Encoded bytes per media item (base64 is measured before decoding, HTTP while streaming).",
    )
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Pixels per image (or video frame) as declared by its header; checked before decoding.",
    )
    max_aspect_ratio: float = Field(
        default=_MAX_ASPECT_RATIO,
        ge=1,
        description="Longer side / shorter side per image, from the header (vision processors such as "
        "Qwen2-VL's refuse more than 200 with an untyped error).",
    )
    max_frames: int = Field(default=64, gt=0, description="Frames per video or animated image.")
    max_video_pixels: int = Field(
        default=200_000_000,
        gt=0,
        description="Pixels summed over all frames of one video (bounds memory: 3 bytes per pixel).",
    )
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Local paths are read only under these folders (symlinks resolved); empty = no local paths.",
    )
    allow_http: bool = Field(default=False, description="Fetch http(s) URLs at all.")
    allowed_domains: list[str] | None = Field(
        default=None,
        description="If set, only these hosts: 'example.com' matches exactly, '.example.com' matches subdomains.",
    )
    http_timeout_s: float = Field(default=10.0, gt=0, description="Total time for one fetch, redirects included.")
    max_redirects: int = Field(default=3, ge=0, description="Redirects followed per fetch.")

    @field_validator("allowed_domains")
    @classmethod
    def _normalise_domains(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        return [d.strip().lower().rstrip(".") for d in v if d.strip()]


@dataclass(frozen=True)
class _Target:
    """One checked HTTP hop: where to connect and what to ask for."""

    url: str  # the logical URL (with the host name), used to resolve relative redirects
    scheme: str
    host: str  # lower-case ASCII host name or IP literal (no brackets)
    port: int
    path_query: str
    host_header: str


@dataclass
class _Fetched:
    data: bytes
    mime: str | None  # declared type (data URI or Content-Type), informative only


class MediaLoader:
    """Loads images and videos from source strings under a :class:`MediaPolicy`.

    Args:
        policy: limits and permissions; ``MediaPolicy()`` (safe defaults) if None.
        resolver: ``resolver(host, port) -> [ip, ...]`` for HTTP hosts; default
            :func:`socket.getaddrinfo`. Injectable so tests never touch real DNS.
        trusted_addresses: ``(ip, port)`` pairs exempt from the public-address rule. For tests,
            which let one loopback server play a public one; keep it empty in production.
        ssl_context: how HTTPS servers are verified (e.g. a private CA); default: the system's
            default (httpx's CA bundle). It must check certificates and host names.

    Thread-safe: a loader holds no mutable state, so one instance can serve many requests.
    """

    def __init__(
        self,
        policy: MediaPolicy | None = None,
        *,
        resolver: Resolver | None = None,
        trusted_addresses: frozenset[tuple[str, int]] = frozenset(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is not None and (not ssl_context.check_hostname or ssl_context.verify_mode != ssl.CERT_REQUIRED):
            raise ValueError("ssl_context must verify certificates and host names")
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.policy = policy if policy is not None else MediaPolicy()
        self._resolver: Resolver = resolver if resolver is not None else _system_resolve
        self._trusted = frozenset((ipaddress.ip_address(ip), int(port)) for ip, port in trusted_addresses)
        # Real roots decide containment; the lexical (absolute, normalised) spelling is also kept so
        # a path written through a symlinked root ("/data" -> "/mnt/data") passes the first check.
        self._real_roots = [Path(os.path.realpath(r)) for r in self.policy.allowed_roots]
        self._lexical_roots = [Path(os.path.normpath(os.path.abspath(r))) for r in self.policy.allowed_roots]

    # ---------------------------------------------------------------------------------------------
    # Public API

    def load_bytes(self, source: str, *, field: str = "media") -> bytes:
        """Return the encoded bytes of a source (any accepted form), with byte and access limits.

        The bytes are not decoded or checked to be an image; use :meth:`load_image` for that.
        """
        return self._fetch(source, field).data

    def load_image(self, source: str, *, field: str = "image_url") -> Image.Image:
        """Load one image as RGB (first frame of an animation).

        Raises:
            MediaForbidden: the source is refused by policy (scheme, path, address, domain).
            PayloadTooLarge: more than ``max_bytes`` encoded bytes.
            LimitExceeded: the header declares more than ``max_pixels`` pixels.
            MediaFetchError: an HTTP fetch failed (status, timeout, redirects, connection).
            MediaError: bad encoding, not a supported raster image, or corrupt data.
        """
        fetched = self._fetch(source, field)
        return self._decode_still(fetched, field, budget=None)

    def load_video(self, source: list[str] | str, *, field: str = "video") -> list[Image.Image]:
        """Load video frames as RGB images.

        ``source`` is either a list of frame sources (each loaded like :meth:`load_image`) or one
        source of an animated GIF/WebP/PNG or a video file (MP4/MOV, Matroska/WebM, AVI; needs
        PyAV). Frame count and pixel sizes are checked from headers before frames are decoded.

        Raises:
            LimitExceeded: more than ``max_frames`` frames, a frame over ``max_pixels``, or more
                than ``max_video_pixels`` pixels in all.
            MediaError: as :meth:`load_image`, or a video file without PyAV installed.
        """
        p = self.policy
        if isinstance(source, list):
            if not source:
                raise MediaError("a video needs at least one frame", field=field, limit=p.max_frames)
            if len(source) > p.max_frames:
                raise LimitExceeded(
                    f"video has {len(source)} frames, more than max_frames", field=field, limit=p.max_frames
                )
            budget = _PixelBudget(p.max_video_pixels)
            return [
                self._decode_still(self._fetch(s, f"{field}[{i}]"), f"{field}[{i}]", budget)
                for i, s in enumerate(source)
            ]
        fetched = self._fetch(source, field)
        container = _sniff_video_container(fetched.data)
        if container is not None:
            return self._decode_container(fetched.data, container, field)
        fmt = _sniff_image(fetched, field)
        with _pil_errors(field, fmt, p.max_pixels):
            with Image.open(io.BytesIO(fetched.data), formats=[fmt]) as im:
                # n_frames reads frame headers only (GIF skips data blocks, WebP/APNG read a count).
                n = int(getattr(im, "n_frames", 1))
                if n > p.max_frames:
                    raise LimitExceeded(
                        f"animated {fmt} has {n} frames, more than max_frames", field=field, limit=p.max_frames
                    )
                w, h = im.size
                self._check_pixels(w, h, field)
                _PixelBudget(p.max_video_pixels).take(n * w * h, field)
                frames = []
                for i in range(n):
                    im.seek(i)
                    im.load()
                    frames.append(_to_rgb(im))
                return frames

    # ---------------------------------------------------------------------------------------------
    # Source -> bytes

    def _fetch(self, source: str, field: str) -> _Fetched:
        if not isinstance(source, str):
            raise MediaError(
                f"a media source must be a string, not {type(source).__name__}", field=field, limit="a string"
            )
        src = source.strip()
        if not src:
            raise MediaError("empty media source", field=field, limit="non-empty")
        if src[:5].lower() == "data:":
            return self._from_data_uri(src, field)
        m = _SCHEME_RE.match(src)
        if m and len(m.group(1)) > 1:
            scheme = m.group(1).lower()
            if scheme not in ("http", "https"):
                raise MediaForbidden(
                    f"the {scheme!r} scheme is not accepted for media", field=field, limit=["http", "https"]
                )
            return self._fetch_http(src, field)
        if len(src) >= _MIN_BARE_BASE64 and _BASE64_CHARS_RE.fullmatch(src):
            return _Fetched(self._decode_base64(src, field), None)
        return _Fetched(self._read_local(src, field), None)

    def _from_data_uri(self, src: str, field: str) -> _Fetched:
        header, sep, payload = src[5:].partition(",")
        if not sep:
            raise MediaError("malformed data URI: no ',' before the payload", field=field, limit="data:<mime>;base64,")
        params = [t.strip().lower() for t in header.split(";")]
        mime = params[0] or None
        if "base64" not in params[1:]:
            raise MediaError("only base64 data URIs are accepted", field=field, limit="data:<mime>;base64,")
        if mime is not None and mime.startswith("image/svg"):
            raise MediaError("SVG is not accepted: send a raster image", field=field, limit=list(IMAGE_FORMATS))
        return _Fetched(self._decode_base64(payload, field), mime)

    def _decode_base64(self, text: str, field: str) -> bytes:
        max_bytes = self.policy.max_bytes
        # Whitespace (line-wrapped base64) is not data; copy only when there is some.
        compact = _WHITESPACE_RE.sub("", text) if _WHITESPACE_RE.search(text) else text
        # Size check before decoding: 4 characters carry 3 bytes, less at most 2 for padding, so
        # this lower bound never refuses a payload that would fit.
        estimate = (len(compact) // 4) * 3 - 2
        if estimate > max_bytes:
            raise PayloadTooLarge(
                f"base64 payload decodes to at least {estimate} bytes, more than max_bytes",
                field=field,
                limit=max_bytes,
            )
        if not compact or not _BASE64_RE.fullmatch(compact):
            raise MediaError("invalid base64 (characters outside the alphabet)", field=field, limit="base64")
        urlsafe = "-" in compact or "_" in compact
        if urlsafe and ("+" in compact or "/" in compact):
            raise MediaError("invalid base64 (mixes standard and URL-safe alphabets)", field=field, limit="base64")
        if len(compact) % 4 == 1:
            raise MediaError("invalid base64 (bad length)", field=field, limit="base64")
        compact += "=" * (-len(compact) % 4)  # tolerate missing padding, a common client quirk
        try:
            data = base64.b64decode(compact, altchars=b"-_" if urlsafe else None, validate=True)
        except binascii.Error as e:
            raise MediaError(f"invalid base64: {e}", field=field, limit="base64") from e
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"media is {len(data)} bytes, more than max_bytes", field=field, limit=max_bytes)
        return data

    def _read_local(self, src: str, field: str) -> bytes:
        if not self._real_roots:
            raise MediaForbidden("local paths are not accepted (no allowed roots configured)", field=field, limit=[])
        roots_limit = [str(r) for r in self.policy.allowed_roots]
        path = Path(src)
        candidates = [path] if path.is_absolute() else [root / path for root in self._lexical_roots]
        for cand in candidates:
            # Lexical check before touching the file system: a ``..`` escape is refused without
            # revealing whether its target exists.
            lexical = Path(os.path.normpath(cand))
            if not _under(lexical, self._lexical_roots) and not _under(lexical, self._real_roots):
                raise MediaForbidden("path is outside the allowed roots", field=field, limit=roots_limit)
            try:
                real = Path(os.path.realpath(cand, strict=True))
            except FileNotFoundError:
                continue
            except OSError as e:  # symlink loop, permission denied, not a directory, ...
                raise MediaError(f"cannot resolve path: {e.strerror}", field=field, limit=roots_limit) from e
            # The real check: symlinks anywhere on the way are resolved, so a link out of a root fails.
            if not _under(real, self._real_roots):
                raise MediaForbidden("path resolves outside the allowed roots", field=field, limit=roots_limit)
            return self._read_file(real, field, roots_limit)
        raise MediaError("no such file under the allowed roots", field=field, limit=roots_limit)

    def _read_file(self, real: Path, field: str, roots_limit: list[str]) -> bytes:
        max_bytes = self.policy.max_bytes
        # O_NOFOLLOW: the last component cannot have been swapped for a symlink since realpath;
        # O_NONBLOCK: opening a FIFO does not hang (it is then refused as not a regular file).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as e:
            raise MediaError(f"cannot open file: {e.strerror}", field=field, limit=roots_limit) from e
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MediaError("not a regular file", field=field, limit=roots_limit)
            # Where the OS says which file we really opened, check it again (closes the race between
            # realpath and open if a folder on the way was swapped for a symlink).
            proc = f"/proc/self/fd/{fd}"
            if os.path.islink(proc) and not _under(Path(os.readlink(proc)), self._real_roots):
                raise MediaForbidden("path resolves outside the allowed roots", field=field, limit=roots_limit)
            if st.st_size > max_bytes:
                raise PayloadTooLarge(f"file is {st.st_size} bytes, more than max_bytes", field=field, limit=max_bytes)
            data = f.read(max_bytes + 1)  # +1: the file may have grown since fstat
        if len(data) > max_bytes:
            raise PayloadTooLarge("file is larger than max_bytes", field=field, limit=max_bytes)
        return data

    # ---------------------------------------------------------------------------------------------
    # HTTP

    def _fetch_http(self, url: str, field: str) -> _Fetched:
        p = self.policy
        if not p.allow_http:
            raise MediaForbidden("http(s) media URLs are disabled", field=field, limit="allow_http=false")
        deadline = time.monotonic() + p.http_timeout_s
        current = url
        for _hop in range(p.max_redirects + 1):
            target = self._check_url(current, field)
            addresses = self._resolve_checked(target, field, deadline)
            result = self._request(target, addresses, field, deadline)
            if isinstance(result, _Fetched):
                return result
            # A redirect: resolve Location against the logical URL (host name, not the IP we used);
            # the next hop goes through every check again.
            current = urljoin(target.url, result)
        raise MediaFetchError(
            f"more than {p.max_redirects} redirects", field=field, limit=p.max_redirects
        )

    def _check_url(self, url: str, field: str) -> _Target:
        p = self.policy
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise MediaError(f"malformed URL: {e}", field=field, limit="http(s)://host[:port]/path") from e
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaForbidden(
                f"the {scheme!r} scheme is not accepted for media", field=field, limit=["http", "https"]
            )
        if parts.username is not None or parts.password is not None:
            raise MediaForbidden("credentials in media URLs are not accepted", field=field, limit="no userinfo")
        host = (parts.hostname or "").rstrip(".")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as e:
                raise MediaError(f"invalid host name: {e}", field=field, limit="a DNS name or IP address") from e
        host = host.lower()
        ip = _parse_ip(host)
        if ip is None and not _HOSTNAME_RE.fullmatch(host):
            raise MediaError("invalid or missing host in URL", field=field, limit="a DNS name or IP address")
        if host in _METADATA_HOSTS:
            raise MediaForbidden("cloud metadata hosts are not accepted", field=field, limit="public hosts only")
        if p.allowed_domains is not None and not _domain_allowed(host, p.allowed_domains):
            raise MediaForbidden(f"host {host!r} is not in the allowed domains", field=field, limit=p.allowed_domains)
        if port is None:
            port = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ip is not None and ip.version == 6 else host
        default_port = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
        path_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _Target(
            url=url.split("#", 1)[0],
            scheme=scheme,
            host=host,
            port=port,
            path_query=path_query,
            host_header=shown if default_port else f"{shown}:{port}",
        )

    def _resolve_checked(self, t: _Target, field: str, deadline: float) -> list[_IP]:
        """Resolve once and validate every address; the request then connects to one of these."""
        literal = _parse_ip(t.host)
        if literal is not None:
            raw = [t.host]
        else:
            raw = _call_with_deadline(
                lambda: self._resolver(t.host, t.port), deadline, field, self.policy.http_timeout_s, t.host
            )
        addresses = []
        for a in raw:
            ip = _parse_ip(str(a))
            if ip is None:
                raise MediaFetchError(f"resolver returned a non-address {a!r}", field=field, limit="IP addresses")
            addresses.append(ip)
        if not addresses:
            raise MediaFetchError(f"host {t.host!r} has no addresses", field=field, limit="resolvable host")
        # Refuse if ANY answer is forbidden: a mixed answer is the usual shape of a rebinding attack.
        for ip in addresses:
            if (ip, t.port) in self._trusted:
                continue
            reason = _forbidden_reason(ip)
            if reason is not None:
                raise MediaForbidden(
                    f"host {t.host!r} resolves to {ip}, a {reason} address",
                    field=field,
                    limit="public (global unicast) addresses only",
                )
        return addresses

    def _request(
        self,
        t: _Target,
        addresses: list[_IP],
        field: str,
        deadline: float,
    ) -> _Fetched | str:
        """GET one hop from a validated address; returns the body or a redirect Location."""
        last: httpx.ConnectError | None = None
        for ip in addresses:
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            try:
                return self._request_one(f"{t.scheme}://{host}:{t.port}{t.path_query}", t, field, deadline)
            except httpx.ConnectError as e:  # try the next validated address, like a browser
                last = e
        raise MediaFetchError(f"cannot connect to {t.host}: {last}", field=field, limit="reachable host") from last

    def _request_one(self, ip_url: str, t: _Target, field: str, deadline: float) -> _Fetched | str:
        p = self.policy
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MediaFetchError("media fetch timed out", field=field, limit=p.http_timeout_s)
        headers = {
            "Host": t.host_header,
            "Accept": "image/*, video/*;q=0.9, */*;q=0.1",
            "Accept-Encoding": "identity",  # the byte cap should measure what the server sends
            "User-Agent": "mmrm-media/1",
        }
        # The URL names the checked IP, so no second DNS lookup can rebind it; TLS still verifies
        # (and SNI names) the real host.
        extensions: dict[str, Any] = {"sni_hostname": t.host} if t.scheme == "https" else {}
        watchdog = _Watchdog(deadline)
        extensions["trace"] = watchdog.trace
        try:
            # One client per hop: no connection (nor a TLS session verified for another name) is
            # reused, and trust_env=False keeps proxy variables from routing around the checks.
            with httpx.Client(
                trust_env=False, follow_redirects=False, timeout=httpx.Timeout(remaining), verify=self._verify
            ) as client:
                try:
                    request = client.build_request("GET", ip_url, headers=headers, extensions=extensions)
                except httpx.InvalidURL as e:
                    raise MediaError(f"malformed URL: {e}", field=field, limit="http(s)://host[:port]/path") from e
                try:
                    response = client.send(request, stream=True)
                    try:
                        result = self._read_response(response, field, deadline)
                    finally:
                        response.close()
                except httpx.ConnectError:
                    raise  # _request tries the next validated address
                except httpx.HTTPError as e:  # timeouts, protocol and transport errors
                    if watchdog.expired or isinstance(e, httpx.TimeoutException):
                        raise MediaFetchError(
                            f"media fetch timed out ({type(e).__name__})", field=field, limit=p.http_timeout_s
                        ) from e
                    raise MediaFetchError(
                        f"media fetch failed: {type(e).__name__}: {e}", field=field, limit="valid HTTP response"
                    ) from e
            if watchdog.expired:  # a close-delimited body cut short by the watchdog looks complete
                raise MediaFetchError("media fetch timed out", field=field, limit=p.http_timeout_s)
            return result
        finally:
            watchdog.cancel()

    def _read_response(self, response: httpx.Response, field: str, deadline: float) -> _Fetched | str:
        p = self.policy
        status = response.status_code
        if status in (301, 302, 303, 307, 308):
            location = response.headers.get("location")
            if not location:
                raise MediaFetchError(f"HTTP {status} redirect without Location", field=field, limit="Location header")
            return location
        if not 200 <= status < 300:
            raise MediaFetchError(f"media server answered HTTP {status}", field=field, limit="HTTP 2xx")
        mime = (response.headers.get("content-type") or "").split(";")[0].strip().lower() or None
        if mime is not None and mime.startswith("image/svg"):
            raise MediaError("SVG is not accepted: send a raster image", field=field, limit=list(IMAGE_FORMATS))
        length = response.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > p.max_bytes:
            raise PayloadTooLarge(
                f"Content-Length {int(length)} is more than max_bytes", field=field, limit=p.max_bytes
            )
        body = bytearray()
        chunks = response.iter_bytes()
        while True:
            # A server that drips bytes never trips a per-read timeout: check the whole budget.
            if time.monotonic() >= deadline:
                raise MediaFetchError("media fetch timed out while reading", field=field, limit=p.http_timeout_s)
            chunk = next(chunks, None)
            if chunk is None:
                break
            body += chunk
            if len(body) > p.max_bytes:
                raise PayloadTooLarge("response body is larger than max_bytes", field=field, limit=p.max_bytes)
        return _Fetched(bytes(body), mime)

    # ---------------------------------------------------------------------------------------------
    # Bytes -> pixels

    def _check_pixels(self, w: int, h: int, field: str) -> None:
        if w <= 0 or h <= 0:
            raise MediaError(f"image has an empty size {w}x{h}", field=field, limit="width, height > 0")
        if w * h > self.policy.max_pixels:
            raise LimitExceeded(
                f"image is {w}x{h} = {w * h} pixels, more than max_pixels", field=field, limit=self.policy.max_pixels
            )
        if max(w, h) / min(w, h) > self.policy.max_aspect_ratio:
            raise LimitExceeded(
                f"image is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}, more than max_aspect_ratio",
                field=field,
                limit=self.policy.max_aspect_ratio,
            )

    def _decode_still(self, fetched: _Fetched, field: str, budget: _PixelBudget | None) -> Image.Image:
        fmt = _sniff_image(fetched, field)
        with _pil_errors(field, fmt, self.policy.max_pixels):
            # Image.open reads only the header; the size is checked before load() decodes anything.
            with Image.open(io.BytesIO(fetched.data), formats=[fmt]) as im:
                w, h = im.size
                self._check_pixels(w, h, field)
                if budget is not None:
                    budget.take(w * h, field)
                im.load()
                return _to_rgb(im)

    def _decode_container(self, data: bytes, container: str, field: str) -> list[Image.Image]:
        p = self.policy
        try:
            import av  # optional: only video files need it
        except ImportError as e:
            raise MediaError(
                "video files need the optional 'av' (PyAV) package; install it or send the frames as images",
                field=field,
                limit="list of frame images or an animated GIF/WebP/PNG",
            ) from e
        av_errors = tuple(
            c for c in (getattr(av, "FFmpegError", None), getattr(av, "AVError", None)) if isinstance(c, type)
        ) + _PIL_DECODE_ERRORS
        try:
            # The demuxer is named, never probed: probing could pick e.g. HLS, which opens URLs.
            with av.open(io.BytesIO(data), mode="r", format=container) as box:
                if not box.streams.video:
                    raise MediaError("the file has no video stream", field=field, limit=list(VIDEO_CONTAINERS))
                stream = box.streams.video[0]
                declared = int(stream.frames or 0)  # 0 when the container does not say
                if declared > p.max_frames:
                    raise LimitExceeded(
                        f"video declares {declared} frames, more than max_frames", field=field, limit=p.max_frames
                    )
                w, h = int(stream.codec_context.width), int(stream.codec_context.height)
                self._check_pixels(w, h, field)
                _PixelBudget(p.max_video_pixels).take(declared * w * h, field)  # from the header
                frames: list[Image.Image] = []
                budget = _PixelBudget(p.max_video_pixels)  # from the frames actually decoded
                for frame in box.decode(stream):
                    # The header may lie or be silent: keep counting while decoding.
                    if len(frames) >= p.max_frames:
                        raise LimitExceeded(
                            f"video has more than {p.max_frames} frames", field=field, limit=p.max_frames
                        )
                    self._check_pixels(frame.width, frame.height, field)
                    budget.take(frame.width * frame.height, field)
                    frames.append(frame.to_image().convert("RGB"))
        except av_errors as e:
            raise MediaError(f"cannot decode {container} video: {e}", field=field, limit=list(VIDEO_CONTAINERS)) from e
        if not frames:
            raise MediaError("the video has no frames", field=field, limit=list(VIDEO_CONTAINERS))
        return frames


# -------------------------------------------------------------------------------------------------
# Resizing and hashing


def fit_pixels(
    image: Image.Image, *, min_pixels: int, max_pixels: int, factor: int = 28, field: str = "image"
) -> Image.Image:
    """Resize ``image`` so its area is within ``[min_pixels, max_pixels]`` and both sides are
    multiples of ``factor``, keeping the aspect ratio as closely as that allows.

    The same rule as Qwen2-VL's ``smart_resize``. This is about fitting a model, not safety: bombs
    are refused earlier, by :class:`MediaLoader`. Returns the image itself when nothing changes.

    Raises:
        ValueError: inconsistent arguments (a programming error, not a user input error).
        LimitExceeded: aspect ratio above 200 (no multiple-of-``factor`` shape fits the range).
    """
    if factor <= 0 or min_pixels <= 0 or max_pixels < min_pixels or max_pixels < factor * factor:
        raise ValueError(
            f"need 0 < min_pixels <= max_pixels and max_pixels >= factor**2, got "
            f"min_pixels={min_pixels}, max_pixels={max_pixels}, factor={factor}"
        )
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image has an empty size {w}x{h}")
    if max(w, h) / min(w, h) > _MAX_ASPECT_RATIO:
        raise LimitExceeded(
            f"aspect ratio {max(w, h) / min(w, h):.0f} is too extreme to resize", field=field, limit=_MAX_ASPECT_RATIO
        )
    h_bar = max(factor, round(h / factor) * factor)
    w_bar = max(factor, round(w / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    if (w_bar, h_bar) == (w, h):
        return image
    return image.resize((w_bar, h_bar), Image.Resampling.BICUBIC)


def image_sha256(image: Image.Image) -> str:
    """Hex SHA-256 of an image's decoded pixels, mode and size: a cache key that does not depend on
    how the image was encoded or where it came from."""
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------
# Helpers


class _Watchdog:
    """Shuts the connection's socket down at the deadline.

    httpx's timeouts are per operation (connect, each read), and a body read gets its timeout when
    the body starts, so a server that goes silent mid-body would hold a fetch past its budget. The
    socket is taken from httpcore's documented ``trace`` events; shutting it down wakes a blocked
    read, and the caller turns the resulting error (or early EOF) into a timeout.
    """

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if not (event.endswith(".connect_tcp.complete") or event.endswith(".start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock  # after start_tls this is the TLS socket that now owns the fd
            expired = self.expired
        if expired:
            _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._sock
        _shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by its owner: nothing left to stop
        pass


class _PixelBudget:
    """Pixels left for one video, taken before each frame is decoded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, pixels: int, field: str) -> None:
        self.used += pixels
        if self.used > self.limit:
            raise LimitExceeded(
                f"video has more than {self.limit} pixels over all frames", field=field, limit=self.limit
            )


@contextlib.contextmanager
def _pil_errors(field: str, fmt: str, max_pixels: int) -> Iterator[None]:
    """Translate Pillow's exceptions into typed media errors (our own errors pass through)."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own bomb guard (2x Image.MAX_IMAGE_PIXELS) fired inside Image.open, before our
        # check could run; the image breaks whichever of the two limits is lower. The warning is
        # only raised when a warnings filter escalates it.
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
        raise LimitExceeded(f"image is a decompression bomb: {e}", field=field, limit=min(max_pixels, pil_limit)) from e
    except _PIL_DECODE_ERRORS as e:
        raise MediaError(f"cannot decode {fmt} image: {e}", field=field, limit=list(IMAGE_FORMATS)) from e


def _sniff_image(fetched: _Fetched, field: str) -> str:
    """The Pillow format of ``fetched`` from its magic bytes; refuses SVG and non-images."""
    data = fetched.data
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if (fetched.mime or "").startswith("image/svg") or (head.startswith(b"<") and b"<svg" in head):
        raise MediaError("SVG is not accepted: send a raster image", field=field, limit=list(IMAGE_FORMATS))
    declared = f" (declared {fetched.mime})" if fetched.mime else ""
    raise MediaError(
        f"not a supported image{declared}: expected PNG, JPEG, WebP, GIF or BMP",
        field=field,
        limit=list(IMAGE_FORMATS),
    )


def _sniff_video_container(data: bytes) -> str | None:
    """PyAV demuxer name for a video container's magic bytes, or None (maybe an image)."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image; transparency is composited on white (not dropped to whatever lies under it)."""
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _parse_ip(text: str) -> _IP | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)
    except ValueError:
        return None


def _forbidden_reason(ip: _IP) -> str | None:
    """Why ``ip`` may not be fetched from, or None if it is a public unicast address."""
    if ip in _METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge the embedded one.
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for v4 in embedded:
            reason = _forbidden_reason(v4)
            if reason is not None:
                return f"{reason} (embedded in IPv6)"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "non-unicast"
    if not ip.is_global:
        return "non-global"
    return None


def _domain_allowed(host: str, allowed: list[str]) -> bool:
    for d in allowed:
        if d.startswith("."):
            if host.endswith(d) and len(host) > len(d):
                return True
        elif host == d:
            return True
    return False


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _system_resolve(host: str, port: int) -> list[str]:
    """All addresses of ``host`` from the system resolver, in its preferred order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def _call_with_deadline(
    fn: Callable[[], list[str]], deadline: float, field: str, budget_s: float, host: str
) -> list[str]:
    """Run a (blocking) resolver with the fetch's time budget; getaddrinfo itself has no timeout."""
    result: list[list[str]] = []
    error: list[Exception] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception as e:  # handed to the calling thread below, never swallowed
            error.append(e)

    thread = threading.Thread(target=run, name="mmrm-media-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise MediaFetchError(f"resolving {host!r} timed out", field=field, limit=budget_s)
    if error:
        if isinstance(error[0], OSError):  # socket.gaierror and friends
            raise MediaFetchError(
                f"cannot resolve {host!r}: {error[0]}", field=field, limit="resolvable host"
            ) from error[0]
        raise error[0]
    return list(result[0])
