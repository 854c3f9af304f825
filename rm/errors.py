"""Typed errors shared by every part of mmrm.

Each error says which input field failed and which limit it broke, so the service can map it to an
HTTP status in one place (``mmrm.serve``) and a user can fix the request without reading logs.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

#: Every machine-readable error kind mmrm uses, in results (``ScoreResult.error_kind``), HTTP error
#: bodies, metrics labels and the eval runner's transient set. One fixed vocabulary: a metric label
#: or a result never carries a string a caller made up.
ErrorKind = Literal[
    "error", "invalid_input", "invalid_media", "media_forbidden", "limit_exceeded", "payload_too_large",
    "input_too_long", "unsupported_input", "media_fetch_failed", "missing_media", "config_error",
    "backend_error", "overloaded", "rate_limited", "replica_unavailable", "timeout", "unauthorized",
    "not_found", "bad_request", "method_not_allowed", "internal", "service_error", "transport_error",
    "reward_unavailable", "low_label_mass", "invalid_output", "budget_exhausted", "scorer_exception",
]
ERROR_KINDS: frozenset[str] = frozenset(get_args(ErrorKind))


def error_kind_of(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` in the fixed vocabulary (``backend_error`` for anything mmrm did not raise,
    ``service_error`` for a kind outside the vocabulary, such as a remote service's ``http_502``)."""
    kind = getattr(exc, "kind", None)
    if kind is None:
        return "backend_error"
    return kind if kind in ERROR_KINDS else "service_error"  # type: ignore[return-value]


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


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def error_from(kind: str | None, message: str, *, field: str | None = None, limit: Any = None,
               retry_after: float | None = None) -> MmrmError:
    """Rebuild a typed error from its wire form (kind, message, field, limit): the class whose
    ``kind`` matches (any loaded subclass of :class:`MmrmError`), else a plain MmrmError."""
    kinds = {c.kind: c for c in [MmrmError, *_subclasses(MmrmError)]}
    cls = kinds.get(kind or "", MmrmError)
    if issubclass(cls, Overloaded):
        return cls(message, field=field, limit=limit, retry_after=retry_after or 1.0)
    err = cls(message, field=field, limit=limit)
    if cls is MmrmError and kind:
        err.kind = kind  # keep the kind even without a class for it (e.g. a judge's invalid_output)
    return err
