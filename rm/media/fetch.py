"""The SSRF-safe HTTP(S) fetcher for media URLs.

Every hop (the first request and each redirect) is checked before anything is connected to: the
scheme (http and https only; a redirect to ``data:``, ``mailto:``, ``file:`` or any other scheme is a
typed refusal), credentials, the host against the domain allow-list and the metadata host names,
and every address the host resolves to against the forbidden ranges (loopback, private, link-local,
metadata, non-global, and IPv6 forms that embed one). The connection then goes to a checked IP, so
a second DNS answer cannot rebind it (TLS still verifies the real host). A watchdog holds the whole
fetch, redirects included, to one deadline.

Redirects are followed here, never by httpx: httpx parses a redirect's ``Location`` into its next
request even when it is told not to follow, and raises untyped errors on odd targets (``data:``,
``mailto:``, a bad IDNA label), so requests go straight to an :class:`httpx.HTTPTransport`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import urljoin, urlsplit

import httpx

from mmrm.rm.errors import MediaError, MediaFetchError, MediaForbidden, PayloadTooLarge
from mmrm.rm.media.policy import IMAGE_FORMATS, MediaPolicy
from mmrm.rm.media.sources import Fetched

__all__ = ["HttpFetcher", "Resolver", "system_resolve"]

#: ``resolver(host, port) -> [ip, ...]``; the default wraps :func:`socket.getaddrinfo`.
Resolver = Callable[[str, int], list[str]]

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

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

_HOSTNAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_\-]*[a-z0-9_])?)*")


@dataclass(frozen=True)
class _Target:
    """One checked HTTP hop: where to connect and what to ask for."""

    url: str  # the logical URL (with the host name), used to resolve relative redirects
    scheme: str
    host: str  # lower-case ASCII host name or IP literal (no brackets)
    port: int
    path_query: str
    host_header: str


class HttpFetcher:
    """Fetches http(s) media URLs under a :class:`MediaPolicy` (see the module docstring).

    Args:
        policy: limits and permissions (``allow_http``, domains, timeout, redirects, bytes).
        resolver: ``resolver(host, port) -> [ip, ...]``; default :func:`system_resolve`.
        trusted_addresses: ``(ip, port)`` pairs exempt from the public-address rule (tests only).
        ssl_context: how HTTPS servers are verified; default: the system's (httpx's CA bundle).

    Thread-safe: it holds no mutable state.
    """

    def __init__(
        self,
        policy: MediaPolicy,
        *,
        resolver: Resolver | None = None,
        trusted_addresses: frozenset[tuple[str, int]] = frozenset(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is not None and (not ssl_context.check_hostname or ssl_context.verify_mode != ssl.CERT_REQUIRED):
            raise ValueError("ssl_context must verify certificates and host names")
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.policy = policy
        self._resolver: Resolver = resolver if resolver is not None else system_resolve
        self._trusted = frozenset((ipaddress.ip_address(ip), int(port)) for ip, port in trusted_addresses)

    def fetch(self, url: str, *, field: str) -> Fetched:
        """GET ``url`` with every check, following at most ``max_redirects`` redirects (each hop
        checked again); the body is capped at ``max_bytes``, the whole fetch at ``http_timeout_s``."""
        p = self.policy
        if not p.allow_http:
            raise MediaForbidden("http(s) media URLs are disabled", field=field, limit="allow_http=false")
        deadline = time.monotonic() + p.http_timeout_s
        current = url
        redirected = False
        for _hop in range(p.max_redirects + 1):
            target = self._check_url(current, field, redirected=redirected)
            addresses = self._resolve_checked(target, field, deadline)
            result = self._request(target, addresses, field, deadline)
            if isinstance(result, Fetched):
                return result
            # A redirect: resolve Location against the logical URL (host name, not the IP we used);
            # the next hop goes through every check again.
            try:
                current = urljoin(target.url, result)
            except ValueError as e:  # e.g. an unbalanced IPv6 bracket in Location
                raise MediaFetchError(
                    f"redirect to a malformed Location: {e}", field=field, limit="an http(s) URL"
                ) from e
            redirected = True
        raise MediaFetchError(
            f"more than {p.max_redirects} redirects", field=field, limit=p.max_redirects
        )

    def _check_url(self, url: str, field: str, *, redirected: bool = False) -> _Target:
        p = self.policy
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise MediaError(f"malformed URL: {e}", field=field, limit="http(s)://host[:port]/path") from e
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            what = f"a redirect to a {scheme!r} URL" if redirected else f"the {scheme!r} scheme"
            raise MediaForbidden(
                f"{what} is not accepted for media (http and https only)", field=field, limit=["http", "https"]
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
    ) -> Fetched | str:
        """GET one hop from a validated address; returns the body or a redirect Location."""
        last: httpx.ConnectError | None = None
        for ip in addresses:
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            try:
                return self._request_one(f"{t.scheme}://{host}:{t.port}{t.path_query}", t, field, deadline)
            except httpx.ConnectError as e:  # try the next validated address, like a browser
                last = e
        raise MediaFetchError(f"cannot connect to {t.host}: {last}", field=field, limit="reachable host") from last

    def _request_one(self, ip_url: str, t: _Target, field: str, deadline: float) -> Fetched | str:
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
        extensions["timeout"] = httpx.Timeout(remaining).as_dict()
        try:
            request = httpx.Request("GET", ip_url, headers=headers, extensions=extensions)
        except httpx.InvalidURL as e:
            watchdog.cancel()
            raise MediaError(f"malformed URL: {e}", field=field, limit="http(s)://host[:port]/path") from e
        try:
            # One transport per hop: no connection (nor a TLS session verified for another name) is
            # reused. A bare transport reads no proxy variables (nothing routes around the checks)
            # and never builds a redirect request of its own (see the module docstring).
            with httpx.HTTPTransport(verify=self._verify, retries=0) as transport:
                try:
                    response = transport.handle_request(request)
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

    def _read_response(self, response: httpx.Response, field: str, deadline: float) -> Fetched | str:
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
        return Fetched(bytes(body), mime)


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


def system_resolve(host: str, port: int) -> list[str]:
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
