"""The ONE retry policy of mmrm's HTTP clients: which failures are retried, how long to wait, when to stop.

Used by :class:`~mmrm.client.Client`, :class:`~mmrm.client.AsyncClient` and the ``openai`` judge
backend (:mod:`mmrm.judges.backends.openai`), so a service's ``Retry-After`` means the same to all.

* **Retried**: 429, 502 and 503 (:data:`RETRY_STATUSES`), connection errors, timeouts and a
  connection closed mid-response (:data:`RETRY_EXCEPTIONS`). Scoring is a pure function of its
  input, so repeating a request is safe.
* **Not retried**: every other status. A bad request stays bad (4xx), a 500 is a bug that repeats.
  **504 is never retried**: it means the request used up the server's deadline. The same request
  costs the same again (it would meet the same deadline, and the caller would wait twice as long),
  and the server may still be computing the abandoned one, so a retry multiplies abandoned work.
  Overload is what 429/503 with ``Retry-After`` say, and those are retried. A caller that gets a
  504 should send fewer items per request (or raise the server's deadline).
* **Waits**: a ``Retry-After`` header (seconds or an HTTP date) is honoured: the next attempt waits
  at least that long (plus up to 10% jitter, at most 1 s, so clients don't stampede). Without one,
  exponential backoff with jitter: ``backoff * 2**(n-1)`` capped at ``backoff_max``, drawn from the
  upper half.
* **Budget**: at most ``max_retries`` retries, and no attempt starts later than ``max_retry_time``
  seconds after the first one (a ``Retry-After`` past the budget ends the retries at once).
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import time
from dataclasses import dataclass, replace
from datetime import timezone
from typing import Any

import httpx
import tenacity

from mmrm.client.errors import ServiceError

__all__ = ["RETRY_EXCEPTIONS", "RETRY_STATUSES", "RetryPolicy", "parse_retry_after", "retryable"]

log = logging.getLogger(__name__)

#: Statuses retried with backoff: rate limited (429) and the transient gateway/server statuses.
#: Not 504 (see the module docstring) and not 500.
RETRY_STATUSES = frozenset({429, 502, 503})
#: Transport failures retried with backoff: connect/read/write/pool timeouts, refused or reset
#: connections, a server that closed the connection mid-response.
RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value: delta-seconds or an HTTP date.

    Returns None when the header is absent or unreadable; never a negative number.

    >>> parse_retry_after("3")
    3.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480.0)
    5.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        ref = time.time() if now is None else now
        secs = when.timestamp() - ref
    if not math.isfinite(secs):
        return None
    return max(0.0, secs)


def retryable(exc: BaseException) -> bool:
    """Whether the policy retries this failure: a :class:`~mmrm.client.errors.ServiceError` with a
    status in :data:`RETRY_STATUSES`, or a transport failure in :data:`RETRY_EXCEPTIONS`.

    >>> retryable(ServiceError(503)), retryable(ServiceError(504)), retryable(httpx.ConnectError("refused"))
    (True, False, True)
    """
    if isinstance(exc, ServiceError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, RETRY_EXCEPTIONS)


@dataclass(frozen=True)
class RetryPolicy:
    """How one logical call is retried (see the module docstring for the rules).

    Args:
        max_retries: retries after the first attempt.
        max_retry_time: no attempt starts later than this many seconds after the first one.
        backoff, backoff_max: exponential backoff base and cap in seconds (jittered) when the
            server sends no ``Retry-After``.

    >>> policy = RetryPolicy(max_retries=2, max_retry_time=10.0)
    >>> for attempt in policy.retrying("GET /v1/models"):  # doctest: +SKIP
    ...     with attempt:
    ...         send()
    """

    max_retries: int = 5
    max_retry_time: float = 60.0
    backoff: float = 0.5
    backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_retry_time < 0:
            raise ValueError(f"max_retry_time must be >= 0 seconds, got {self.max_retry_time}")
        if self.backoff <= 0 or self.backoff_max < self.backoff:
            raise ValueError(f"need 0 < backoff <= backoff_max, got backoff={self.backoff}, backoff_max={self.backoff_max}")

    def without_retries(self) -> RetryPolicy:
        """The same policy with no retries (health and readiness probes, one-shot lookups)."""
        return replace(self, max_retries=0)

    def retrying(self, what: str) -> tenacity.Retrying:
        """A tenacity loop for one call (``for attempt in ...: with attempt: ...``); the last
        failure is re-raised. ``what`` names the call in the warning logged before each retry."""
        return tenacity.Retrying(**_Attempts(self, what).kwargs())

    def aretrying(self, what: str) -> tenacity.AsyncRetrying:
        """See :meth:`retrying`; for ``async for``."""
        return tenacity.AsyncRetrying(**_Attempts(self, what).kwargs())


class _Attempts:
    """tenacity ``retry``/``wait``/``stop`` of one logical call.

    The sleep before the next attempt is decided once per attempt (so stop and wait agree on it,
    whatever order a tenacity version calls them in): ``Retry-After`` when the server sent one,
    else exponential backoff with jitter.
    """

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self._planned: dict[int, float] = {}

    def _sleep_for(self, rs: tenacity.RetryCallState) -> float:
        n = rs.attempt_number
        if n not in self._planned:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            ra = exc.retry_after if isinstance(exc, ServiceError) else None
            if ra is not None:
                # At least what the server asked for, plus a little jitter so clients don't stampede.
                sleep = ra + random.uniform(0, min(1.0, 0.1 * ra))
            else:
                p = self.policy
                base = min(p.backoff_max, p.backoff * 2 ** (n - 1))
                sleep = base / 2 + random.uniform(0, base / 2)
            self._planned[n] = sleep
        return self._planned[n]

    def wait(self, rs: tenacity.RetryCallState) -> float:
        return self._sleep_for(rs)

    def stop(self, rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number > self.policy.max_retries:
            return True
        return rs.seconds_since_start + self._sleep_for(rs) > self.policy.max_retry_time

    def before_sleep(self, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        what = f"HTTP {exc.status}" if isinstance(exc, ServiceError) else type(exc).__name__
        log.warning("%s failed with %s; retry %d/%d in %.2fs", self.what, what, rs.attempt_number,
                    self.policy.max_retries, self._sleep_for(rs))

    def kwargs(self) -> dict[str, Any]:
        return dict(
            retry=tenacity.retry_if_exception(retryable),
            wait=self.wait,
            stop=self.stop,
            before_sleep=self.before_sleep,
            reraise=True,
        )
