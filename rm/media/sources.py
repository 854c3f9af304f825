"""Media source strings: the one classifier of source forms, and reading the inline and local ones.

:func:`classify_source` is the only place that decides what a source string is (the accepted forms
are listed in :mod:`mmrm.rm.media`). Every caller that needs to tell a path from inline data (the
loader, the benchmark loaders) asks it, so no two places read the same string differently.
HTTP(S) sources are fetched by :mod:`mmrm.rm.media.fetch`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmrm.rm.errors import MediaError, MediaForbidden, PayloadTooLarge
from mmrm.rm.media.policy import IMAGE_FORMATS

__all__ = ["Fetched", "LocalFiles", "Source", "SourceKind", "classify_source", "decode_base64", "read_data_uri"]

#: What a source string is: a base64 ``data:`` URI, a URL (any scheme; only http(s) may be fetched),
#: bare base64, or a local path.
SourceKind = Literal["data_uri", "url", "base64", "path"]

_MIN_BARE_BASE64 = 64  # a 1x1 PNG is 67 bytes = 92 base64 characters; shorter strings are paths
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BASE64_CHARS_RE = re.compile(r"[A-Za-z0-9+/\-_=\s]+")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
_WHITESPACE_RE = re.compile(r"\s")


@dataclass
class Fetched:
    """The encoded bytes of one source, with its declared MIME type (informative only: formats are
    identified by magic bytes, never by what a sender declares)."""

    data: bytes
    mime: str | None


@dataclass(frozen=True)
class Source:
    """A classified source string: its kind, the stripped text, and (for URLs) the lower-case scheme."""

    kind: SourceKind
    text: str
    scheme: str | None = None


def classify_source(source: str, *, field: str = "media") -> Source:
    """What ``source`` is, by the rules of :mod:`mmrm.rm.media` (first match wins).

    Raises:
        MediaError: ``source`` is not a string, or is empty.

    >>> classify_source("data:image/png;base64,iVBO").kind
    'data_uri'
    >>> classify_source("FILE:///etc/passwd").scheme
    'file'
    >>> classify_source("images/cat.png").kind
    'path'
    """
    if not isinstance(source, str):
        raise MediaError(
            f"a media source must be a string, not {type(source).__name__}", field=field, limit="a string"
        )
    src = source.strip()
    if not src:
        raise MediaError("empty media source", field=field, limit="non-empty")
    if src[:5].lower() == "data:":
        return Source("data_uri", src, "data")
    m = _SCHEME_RE.match(src)
    if m and len(m.group(1)) > 1:  # one letter is a Windows drive ("C:"), read as a path
        return Source("url", src, m.group(1).lower())
    if len(src) >= _MIN_BARE_BASE64 and _BASE64_CHARS_RE.fullmatch(src):
        return Source("base64", src)
    return Source("path", src)


def decode_base64(text: str, *, max_bytes: int, field: str) -> bytes:
    """Decode standard or URL-safe base64 (whitespace ignored, padding optional) under ``max_bytes``.

    The size is checked on the text before anything is decoded.
    """
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


def read_data_uri(src: str, *, max_bytes: int, field: str) -> Fetched:
    """The payload of a ``data:[<mime>][;<param>]*;base64,<payload>`` URI (base64 ones only; no SVG)."""
    header, sep, payload = src[5:].partition(",")
    if not sep:
        raise MediaError("malformed data URI: no ',' before the payload", field=field, limit="data:<mime>;base64,")
    params = [t.strip().lower() for t in header.split(";")]
    mime = params[0] or None
    if "base64" not in params[1:]:
        raise MediaError("only base64 data URIs are accepted", field=field, limit="data:<mime>;base64,")
    if mime is not None and mime.startswith("image/svg"):
        raise MediaError("SVG is not accepted: send a raster image", field=field, limit=list(IMAGE_FORMATS))
    return Fetched(decode_base64(payload, max_bytes=max_bytes, field=field), mime)


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class LocalFiles:
    """Reads local files only under the allowed roots (symlinks resolved, races closed).

    Args:
        allowed_roots: folders that may be read; empty refuses every local path.
        max_bytes: bytes per file.
    """

    def __init__(self, allowed_roots: list[Path], *, max_bytes: int) -> None:
        self.allowed_roots = list(allowed_roots)
        self.max_bytes = max_bytes
        # Real roots decide containment; the lexical (absolute, normalised) spelling is also kept so
        # a path written through a symlinked root ("/data" -> "/mnt/data") passes the first check.
        self._real_roots = [Path(os.path.realpath(r)) for r in self.allowed_roots]
        self._lexical_roots = [Path(os.path.normpath(os.path.abspath(r))) for r in self.allowed_roots]

    def read(self, src: str, *, field: str) -> bytes:
        """The bytes of the file ``src`` (absolute, or relative to each root in order)."""
        if not self._real_roots:
            raise MediaForbidden("local paths are not accepted (no allowed roots configured)", field=field, limit=[])
        roots_limit = [str(r) for r in self.allowed_roots]
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
        max_bytes = self.max_bytes
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
