"""The errors of mmrm's HTTP client: the service said no (:class:`ServiceError`), the service could
not be reached (:class:`TransportError`), or it answered with something the API does not promise
(:class:`BadResponse`). All are :class:`~mmrm.rm.errors.MmrmError`, so ``field`` and ``limit`` read
the same as in process."""

from __future__ import annotations

from typing import Any

from mmrm.rm.errors import MmrmError

__all__ = ["BadResponse", "ServiceError", "TransportError"]


class ServiceError(MmrmError):
    """The service answered with an error status (after retries, for the retried statuses).

    Attributes:
        status: the HTTP status code.
        kind: the service's machine-readable error kind (``invalid_input``, ``limit_exceeded``,
            ``overloaded``, ...), or ``http_<status>`` when the body carried none.
        message, field, limit: as in :class:`~mmrm.rm.errors.MmrmError`, from the error body.
        request_id: the ``X-Request-Id`` of the failed call.
        retry_after: seconds the service asked to wait (429/503), or None.

    >>> e = ServiceError(422, {"error": {"kind": "limit_exceeded", "message": "too many pixels",
    ...                                  "field": "items[0].response.content[1]", "limit": 1048576}})
    >>> e.status, e.kind, e.field, e.limit
    (422, 'limit_exceeded', 'items[0].response.content[1]', 1048576)
    >>> str(e)
    'HTTP 422: too many pixels [items[0].response.content[1]] (limit: 1048576)'
    """

    kind = "service_error"

    def __init__(
        self,
        status: int,
        body: Any = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or f"HTTP {status}")
            kind, field, limit = err.get("kind"), err.get("field"), err.get("limit")
        else:
            message = body if isinstance(body, str) and body else f"HTTP {status}"
            kind, field, limit = None, None, None
        super().__init__(f"HTTP {status}: {message}", field=field, limit=limit)
        self.status = status
        self.kind = str(kind) if kind else f"http_{status}"
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether the client's retry policy retries this status
        (:data:`mmrm.client.retry.RETRY_STATUSES`; 504 is not retried)."""
        # Imported here: the policy lives with the retries, and mmrm.client.retry imports this module.
        from mmrm.client.retry import RETRY_STATUSES

        return self.status in RETRY_STATUSES


class TransportError(MmrmError):
    """The service could not be reached, or did not answer in time, after all retries.

    The underlying :mod:`httpx` exception is chained as ``__cause__``.
    """

    kind = "transport_error"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class BadResponse(ServiceError):
    """A 2xx answer whose body is not what the API promises (not JSON, wrong item count, ...)."""
