"""Typed errors shared by every part of mmrm.

Each error says which input field failed and which limit it broke, so the service can map it to an
HTTP status in one place (``mmrm.serve``) and a user can fix the request without reading logs.
"""

from __future__ import annotations

from typing import Any


class MmrmError(Exception):
    """Base class of every error mmrm raises on purpose.

    Attributes:
        field: dotted path of the offending input (``messages[1].content[0].image_url``), or None.
        limit: the limit that was broken (a number, a list of allowed values, ...), or None.
    """

    #: a short machine-readable kind, stable across versions (used in HTTP bodies and metrics).
    kind: str = "error"

    def __init__(self, message: str, *, field: str | None = None, limit: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit

    def with_field_prefix(self, prefix: str) -> "MmrmError":
        """Return this error with ``prefix`` prepended to its field path (mutates and returns self)."""
        if prefix:
            self.field = f"{prefix}.{self.field}" if self.field else prefix
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description: kind, message, field and limit."""
        limit = self.limit
        if limit is not None and not isinstance(limit, (int, float, str, bool, list)):
            limit = str(limit)
        return {"kind": self.kind, "message": self.message, "field": self.field, "limit": limit}

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        lim = f" (limit: {self.limit})" if self.limit is not None else ""
        return f"{self.message}{where}{lim}"


class InvalidInput(MmrmError):
    """The request is well-formed JSON but its content cannot be scored as given."""

    kind = "invalid_input"


class MediaError(InvalidInput):
    """A media part could not be loaded: bad encoding, undecodable bytes, unsupported form."""

    kind = "invalid_media"


class MediaForbidden(MediaError):
    """A media source is refused by policy: file://, a path outside allowed roots, a private address."""

    kind = "media_forbidden"


class LimitExceeded(InvalidInput):
    """An input breaks a configured size limit (pixels, frames, bytes, tokens, items)."""

    kind = "limit_exceeded"


class PayloadTooLarge(LimitExceeded):
    """The raw bytes of a request or a media item exceed the byte limit."""

    kind = "payload_too_large"


class InputTooLong(LimitExceeded):
    """A sample is longer than the model's maximum length and the truncation policy is ``refuse``."""

    kind = "input_too_long"


class UnsupportedInput(InvalidInput):
    """The scorer cannot take this kind of input (e.g. images given to a text-only backbone)."""

    kind = "unsupported_input"


class MediaFetchError(MediaError):
    """A remote media fetch failed (timeout, HTTP error status, connection refused)."""

    kind = "media_fetch_failed"


class ConfigError(MmrmError):
    """A configuration file or checkpoint directory is invalid."""

    kind = "config_error"


class BackendError(MmrmError):
    """A scoring backend failed at run time (judge server down, timeout, out of memory)."""

    kind = "backend_error"


class Overloaded(MmrmError):
    """The service refuses work because its queues are full; retry after ``retry_after`` seconds."""

    kind = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
