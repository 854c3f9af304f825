"""The media loader: source string -> bytes (sources, fetch) -> RGB pixels (decode), under a policy."""

from __future__ import annotations

import ssl

from PIL import Image

from mmrm.rm.errors import LimitExceeded, MediaError, MediaForbidden
from mmrm.rm.media.decode import Decoder, PixelBudget, sniff_video_container
from mmrm.rm.media.fetch import HttpFetcher, Resolver
from mmrm.rm.media.policy import MediaPolicy
from mmrm.rm.media.sources import Fetched, LocalFiles, classify_source, decode_base64, read_data_uri

__all__ = ["MediaLoader"]


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
        self.policy = policy if policy is not None else MediaPolicy()
        self._http = HttpFetcher(
            self.policy, resolver=resolver, trusted_addresses=trusted_addresses, ssl_context=ssl_context
        )
        self._files = LocalFiles(self.policy.allowed_roots, max_bytes=self.policy.max_bytes)
        self._decoder = Decoder(self.policy)

    # ---------------------------------------------------------------------------------------------
    # Public API

    def load_bytes(self, source: str, *, field: str = "media") -> bytes:
        """Return the encoded bytes of a source (any accepted form), with byte and access limits.

        The bytes are not decoded or checked to be an image; use :meth:`load_image` for that.
        """
        return self._fetch(source, field).data

    def load_image(self, source: str, *, field: str = "image_url") -> Image.Image:
        """Load one image as RGB (first frame of an animation, EXIF orientation applied).

        Raises:
            MediaForbidden: the source is refused by policy (scheme, path, address, domain).
            PayloadTooLarge: more than ``max_bytes`` encoded bytes.
            LimitExceeded: the header declares more than ``max_pixels`` pixels.
            MediaFetchError: an HTTP fetch failed (status, timeout, redirects, connection).
            MediaError: bad encoding, not a supported raster image, or corrupt data.
        """
        return self._decoder.still(self._fetch(source, field), field)

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
            budget = PixelBudget(p.max_video_pixels)
            return [
                self._decoder.still(self._fetch(s, f"{field}[{i}]"), f"{field}[{i}]", budget)
                for i, s in enumerate(source)
            ]
        fetched = self._fetch(source, field)
        container = sniff_video_container(fetched.data)
        if container is not None:
            return self._decoder.container(fetched.data, container, field)
        return self._decoder.frames(fetched, field)

    # ---------------------------------------------------------------------------------------------
    # Source -> bytes

    def _fetch(self, source: str, field: str) -> Fetched:
        src = classify_source(source, field=field)
        if src.kind == "data_uri":
            return read_data_uri(src.text, max_bytes=self.policy.max_bytes, field=field)
        if src.kind == "url":
            if src.scheme not in ("http", "https"):
                raise MediaForbidden(
                    f"the {src.scheme!r} scheme is not accepted for media", field=field, limit=["http", "https"]
                )
            return self._http.fetch(src.text, field=field)
        if src.kind == "base64":
            return Fetched(decode_base64(src.text, max_bytes=self.policy.max_bytes, field=field), None)
        return Fetched(self._files.read(src.text, field=field), None)
