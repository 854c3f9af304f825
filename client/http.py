"""HTTP client for the mmrm scoring service (light: httpx + tenacity + pydantic; no torch, no Ray).

An RL loop or an eval script talks to a remote mmrm service through :class:`Client` (sync) or
:class:`AsyncClient` (asyncio). Both take the same arguments, have the same methods and return the
same types: the inputs are :class:`~mmrm.rm.types.Sample` / ``Pair`` / ``Group`` objects (or dicts of
the same shape), the results are :class:`~mmrm.rm.protocol.ItemResult` records (a
:class:`~mmrm.rm.types.ScoreResult` plus its index), one per item, in order, and
:class:`~mmrm.rm.scorer.GroupResult` records for groups. Request bodies are built from the wire
protocol's own models (:mod:`mmrm.rm.protocol`), so the client sends exactly what the server accepts.
An item the service cannot score (bad media, too long, ...) comes back as that item's invalid result
(``on_item_error="return"``, the default); ``on_item_error="fail"`` asks for a 422 naming it instead.
:class:`RemoteScorer` makes a served model or judge a :class:`~mmrm.rm.scorer.Scorer`.

>>> from mmrm.client import Client
>>> with Client(base_url="http://127.0.0.1:8000", token="secret") as client:  # doctest: +SKIP
...     results = client.score([{"prompt": "2+2?", "response": "4"}], model="rm-small")
...     results[0].value
1.73

Reliability rules (one place, both clients):

* **Retries** with exponential backoff and jitter on 429, 502, 503, 504, on connection errors and
  on timeouts. A ``Retry-After`` header (seconds or an HTTP date) is honoured: the next attempt
  waits at least that long. Retries stop after ``max_retries`` retries or when the next attempt
  would start later than ``max_retry_time`` seconds after the first one, whichever comes first.
  Scoring is a pure function of its input, so repeating a request is safe.
* **No retry** on any other 4xx (a bad request stays bad) nor on 500: these raise
  :class:`ServiceError` at once, carrying the service's ``kind``, ``message``, ``field`` and
  ``limit``.
* **One request id per logical call**, sent as ``X-Request-Id`` and reused by every retry of that
  call, so the client's log lines and the service's correlate. Pass ``request_id=`` to choose it.
* **Auth**: ``token=`` or the ``MMRM_API_TOKEN`` environment variable, sent as
  ``Authorization: Bearer <token>``; ``token=None`` sends none.

Responses are read leniently (unknown fields in a result record are dropped; an error kind outside
:data:`~mmrm.rm.errors.ErrorKind` reads as ``service_error``), so an older client keeps working
against a newer service.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from typing import Any, Literal, TypeVar, Union

import httpx
import tenacity
from pydantic import BaseModel, ValidationError

from mmrm.rm.errors import ERROR_KINDS, InvalidInput, MmrmError
from mmrm.rm.protocol import CompareRequest, ItemResult, JudgeRequest, OnItemError, RankRequest, ScoreRequest
from mmrm.rm.scorer import GroupResult, Groups, Pairs, References, Samples, rank_pointwise
from mmrm.rm.types import Group, Pair, Provenance, Sample, as_response

__all__ = [
    "AsyncClient",
    "Client",
    "RemoteScorer",
    "ServiceError",
    "TransportError",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

#: A sample given as the model or as a dict of the same shape.
SampleLike = Union[Sample, Mapping[str, Any]]
PairLike = Union[Pair, Mapping[str, Any]]
GroupLike = Union[Group, Mapping[str, Any]]
TimeoutTypes = Union[float, None, httpx.Timeout]

#: Statuses retried with backoff (429 and the transient gateway/server statuses).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Transport failures retried with backoff: connect/read/write/pool timeouts, refused or reset
#: connections, a server that closed the connection mid-response.
_RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
TOKEN_ENV = "MMRM_API_TOKEN"
BASE_URL_ENV = "MMRM_BASE_URL"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Sentinel telling "not given" (read the environment) from ``None`` (explicitly none).
UNSET: Any = _Unset()


# --------------------------------------------------------------------------------------------------
# Errors


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


# --------------------------------------------------------------------------------------------------
# Pure helpers (shared by both clients)


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


def _new_request_id() -> str:
    return uuid.uuid4().hex


def _validated(items: Iterable[Any], model: type[BaseModel], field: str) -> list[Any]:
    """Validate request items locally, so a mistake fails before any traffic, naming ``field[i]``."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(item if isinstance(item, model) else model.model_validate(item))
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise InvalidInput(f"{first.get('msg', 'invalid')}", field=f"{field}[{i}]" + (f".{loc}" if loc else "")) from e
    return out


def _body(request: BaseModel) -> dict[str, Any]:
    """The JSON body of a protocol request. ``on_item_error`` is left out at its default, so a
    service older than the field still accepts the request."""
    exclude = {"on_item_error"} if getattr(request, "on_item_error", None) == "return" else None
    return request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)


def _encode_json(body: Any) -> bytes:
    """UTF-8 JSON; text that UTF-8 cannot carry (a lone surrogate) goes as ``\\uXXXX`` escapes, so
    the service, not the client's encoder, decides about that item."""
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _known(cls: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    names = set(cls.model_fields)
    for f in cls.model_fields.values():
        if f.alias:
            names.add(f.alias)
    return {k: v for k, v in data.items() if k in names}


def _item_result(data: Mapping[str, Any], index: int) -> ItemResult:
    d = _known(ItemResult, data)
    d.setdefault("index", index)
    if isinstance(d.get("provenance"), Mapping):
        d["provenance"] = _known(Provenance, d["provenance"])
    if d.get("error_kind") is not None and d["error_kind"] not in ERROR_KINDS:
        d["error_kind"] = "service_error"  # a newer service's kind this client does not know
    return ItemResult.model_validate(d)


def _ordered(data: Any, n: int, status: int, request_id: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, list) or len(data) != n or not all(isinstance(d, Mapping) for d in data):
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise BadResponse(status, f"expected {n} result records in 'data', got {got}", request_id=request_id)
    if all(isinstance(d.get("index"), int) for d in data):
        data = sorted(data, key=lambda d: d["index"])
        if [d["index"] for d in data] != list(range(n)):
            raise BadResponse(status, "result indexes are not 0..n-1", request_id=request_id)
    return data


def _reindexed(results: list[ItemResult]) -> list[ItemResult]:
    """Results of several requests joined: each index becomes the item's position in the whole list."""
    for i, r in enumerate(results):
        r.index = i
    return results


class _Call:
    """One logical call: method, path, body and the request id reused by all its retries."""

    __slots__ = ("method", "path", "content", "request_id", "retry")

    def __init__(self, method: str, path: str, json: Any = None, *, request_id: str | None = None, retry: bool = True):
        self.method = method
        self.path = path
        self.content = None if json is None else _encode_json(json)  # encoded once, resent as is by retries
        self.request_id = request_id or _new_request_id()
        self.retry = retry

    def headers(self) -> dict[str, str]:
        h = {"X-Request-Id": self.request_id}
        if self.content is not None:
            h["Content-Type"] = "application/json"
        return h


class _RetryPolicy:
    """tenacity ``retry``/``wait``/``stop`` for one logical call.

    The sleep before the next attempt is decided once per attempt (so stop and wait agree on it,
    whatever order a tenacity version calls them in): ``Retry-After`` when the server sent one,
    else exponential backoff with jitter.
    """

    def __init__(self, *, max_retries: int, max_retry_time: float, backoff: float, backoff_max: float, call: _Call):
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.call = call
        self._planned: dict[int, float] = {}

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, ServiceError):
            return exc.retryable
        return isinstance(exc, _RETRY_EXCEPTIONS)

    def _sleep_for(self, rs: tenacity.RetryCallState) -> float:
        n = rs.attempt_number
        if n not in self._planned:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            ra = getattr(exc, "retry_after", None)
            if ra is not None:
                # At least what the server asked for, plus a little jitter so clients don't stampede.
                sleep = ra + random.uniform(0, min(1.0, 0.1 * ra))
            else:
                base = min(self.backoff_max, self.backoff * 2 ** (n - 1))
                sleep = base / 2 + random.uniform(0, base / 2)
            self._planned[n] = sleep
        return self._planned[n]

    def wait(self, rs: tenacity.RetryCallState) -> float:
        return self._sleep_for(rs)

    def stop(self, rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number > self.max_retries:
            return True
        return rs.seconds_since_start + self._sleep_for(rs) > self.max_retry_time

    def before_sleep(self, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        what = f"HTTP {exc.status}" if isinstance(exc, ServiceError) else type(exc).__name__
        log.warning("mmrm %s %s (request %s) failed with %s; retry %d/%d in %.2fs",
                    self.call.method, self.call.path, self.call.request_id, what,
                    rs.attempt_number, self.max_retries, self._sleep_for(rs))

    def kwargs(self) -> dict[str, Any]:
        return dict(
            retry=tenacity.retry_if_exception(self.retryable),
            wait=self.wait,
            stop=self.stop,
            before_sleep=self.before_sleep,
            reraise=True,
        )


T = TypeVar("T")


class _BaseClient:
    """Configuration and request/response handling shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(
        self,
        *,
        base_url: str | None,
        token: str | None,
        timeout: TimeoutTypes,
        max_retries: int,
        max_retry_time: float,
        backoff: float,
        backoff_max: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_retry_time < 0:
            raise ValueError(f"max_retry_time must be >= 0 seconds, got {max_retry_time}")
        if backoff <= 0 or backoff_max < backoff:
            raise ValueError(f"need 0 < backoff <= backoff_max, got backoff={backoff}, backoff_max={backoff_max}")
        self.base_url = (base_url if base_url is not None else os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL)).rstrip("/")
        if token is UNSET:
            token = os.environ.get(TOKEN_ENV) or None
        from mmrm.rm.version import __version__

        self._headers: dict[str, str] = {"User-Agent": f"mmrm-client/{__version__}", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._headers.update(headers or {})
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self.backoff = backoff
        self.backoff_max = backoff_max

    def _policy(self, call: _Call) -> _RetryPolicy:
        return _RetryPolicy(max_retries=self.max_retries if call.retry else 0, max_retry_time=self.max_retry_time,
                            backoff=self.backoff, backoff_max=self.backoff_max, call=call)

    @staticmethod
    def _check(resp: httpx.Response, call: _Call) -> httpx.Response:
        if resp.status_code < 400:
            return resp
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        raise ServiceError(resp.status_code, body,
                           request_id=resp.headers.get("x-request-id", call.request_id),
                           retry_after=parse_retry_after(resp.headers.get("retry-after")))

    @staticmethod
    def _transport_error(exc: httpx.HTTPError, call: _Call) -> TransportError:
        return TransportError(f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}", request_id=call.request_id)

    @staticmethod
    def _json(resp: httpx.Response, call: _Call) -> Any:
        try:
            return resp.json()
        except ValueError as e:
            raise BadResponse(resp.status_code, f"response is not JSON: {resp.text[:200]!r}", request_id=call.request_id) from e

    # ---- request bodies and response parsing (pure)

    @staticmethod
    def _score_body(samples: Iterable[SampleLike], model: str, on_item_error: OnItemError) -> dict[str, Any]:
        return _body(ScoreRequest(model=model, items=_validated(samples, Sample, "items"), on_item_error=on_item_error))

    @staticmethod
    def _compare_body(pairs: Iterable[PairLike], model: str, on_item_error: OnItemError) -> dict[str, Any]:
        return _body(CompareRequest(model=model, pairs=_validated(pairs, Pair, "pairs"), on_item_error=on_item_error))

    @staticmethod
    def _rank_body(groups: Iterable[GroupLike], model: str, eps: float, on_item_error: OnItemError) -> dict[str, Any]:
        return _body(RankRequest(model=model, groups=_validated(groups, Group, "groups"), eps=eps,
                                 on_item_error=on_item_error))

    @staticmethod
    def _judge_body(
        judge: str, rubric: str | Mapping[str, Any] | None, items: Iterable[SampleLike] | None,
        pairs: Iterable[PairLike] | None, references: Sequence[str | None] | None, on_item_error: OnItemError,
    ) -> tuple[dict[str, Any], int]:
        if (items is None) == (pairs is None):
            raise ValueError("judge() needs exactly one of items= and pairs=")
        its = None if items is None else _validated(items, Sample, "items")
        prs = None if pairs is None else _validated(pairs, Pair, "pairs")
        req = JudgeRequest(judge=judge, rubric=rubric if rubric is None or isinstance(rubric, str) else dict(rubric),
                           items=its, pairs=prs, references=None if references is None else list(references),
                           on_item_error=on_item_error)
        return _body(req), len(its if its is not None else prs or [])

    @staticmethod
    def _results(payload: Any, n: int, resp: httpx.Response, call: _Call) -> list[ItemResult]:
        data = payload.get("data") if isinstance(payload, Mapping) else None
        try:
            return [_item_result(d, i) for i, d in enumerate(_ordered(data, n, resp.status_code, call.request_id))]
        except ValidationError as e:
            raise BadResponse(resp.status_code, f"malformed result record: {e}", request_id=call.request_id) from e

    @staticmethod
    def _rank_results(payload: Any, n: int, resp: httpx.Response, call: _Call) -> list[GroupResult]:
        data = payload.get("data") if isinstance(payload, Mapping) else None
        out = []
        try:
            for d in _ordered(data, n, resp.status_code, call.request_id):
                results = [_item_result(r, j) for j, r in enumerate(d.get("results", []))]
                out.append(GroupResult(results=results, normalized=d.get("normalized", [])))
        except ValidationError as e:
            raise BadResponse(resp.status_code, f"malformed rank record: {e}", request_id=call.request_id) from e
        return out

    @staticmethod
    def _batches(items: Sequence[T], batch_size: int, concurrency: int) -> list[Sequence[T]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


_CLIENT_ARGS_DOC = """
    Args:
        base_url: the service root, e.g. ``http://rm.internal:8000`` (default: ``$MMRM_BASE_URL``,
            else ``http://127.0.0.1:8000``).
        token: bearer token; not given: ``$MMRM_API_TOKEN``; ``None``: send no Authorization header.
        timeout: per-attempt timeout in seconds, or an :class:`httpx.Timeout` (default 120 s read,
            10 s connect).
        max_retries: retries after the first attempt (429/502/503/504, connection errors, timeouts).
        max_retry_time: no attempt starts later than this many seconds after the first one.
        backoff, backoff_max: exponential backoff base and cap in seconds (jittered) when the
            server sends no ``Retry-After``.
        headers: extra headers sent with every request.
        transport: an httpx transport (tests, proxies, unix sockets).
"""


class Client(_BaseClient):
    __doc__ = """Synchronous client of the mmrm service. Thread-safe; use it as a context manager.

    >>> client = Client(base_url="http://127.0.0.1:8000", token=None, max_retries=2)
    >>> client.base_url
    'http://127.0.0.1:8000'
    >>> client.close()
    """ + _CLIENT_ARGS_DOC

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token: str | None = UNSET,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        max_retry_time: float = 60.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, token=token, timeout=timeout, max_retries=max_retries,
                         max_retry_time=max_retry_time, backoff=backoff, backoff_max=backoff_max, headers=headers)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    # ---- lifecycle

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- transport

    def _send(self, call: _Call) -> httpx.Response:
        def attempt() -> httpx.Response:
            resp = self._http.request(call.method, call.path, content=call.content, headers=call.headers())
            return self._check(resp, call)

        try:
            for att in tenacity.Retrying(**self._policy(call).kwargs()):
                with att:
                    resp = attempt()
            return resp
        except httpx.HTTPError as e:
            raise self._transport_error(e, call) from e

    def request(self, method: str, path: str, *, json: Any = None, request_id: str | None = None) -> Any:
        """Send one request (with the retry rules) and return the decoded JSON body.

        A pass-through for endpoints without a typed method (or whose body is still evolving).
        """
        call = _Call(method, path, json, request_id=request_id)
        return self._json(self._send(call), call)

    # ---- endpoints

    def score(self, samples: Iterable[SampleLike], *, model: str, on_item_error: OnItemError = "return",
              request_id: str | None = None) -> list[ItemResult]:
        """Pointwise rewards: one result per sample, in order (``POST /v1/score``).

        A sample the service cannot score comes back with ``invalid`` set (and ``error_kind``,
        ``field``, ``limit``); it does not fail the call unless ``on_item_error="fail"`` (then the
        service answers 422 naming it, raised as :class:`ServiceError`).
        """
        body = self._score_body(samples, model, on_item_error)
        call = _Call("POST", "/v1/score", body, request_id=request_id)
        resp = self._send(call)
        return self._results(self._json(resp, call), len(body["items"]), resp, call)

    def compare(self, pairs: Iterable[PairLike], *, model: str, on_item_error: OnItemError = "return",
                request_id: str | None = None) -> list[ItemResult]:
        """P(A > B) per pair, in ``value`` and ``prob_a_wins`` (``POST /v1/compare``); item failures as in :meth:`score`."""
        body = self._compare_body(pairs, model, on_item_error)
        call = _Call("POST", "/v1/compare", body, request_id=request_id)
        resp = self._send(call)
        return self._results(self._json(resp, call), len(body["pairs"]), resp, call)

    def rank(self, groups: Iterable[GroupLike], *, model: str, eps: float = 1e-6, on_item_error: OnItemError = "return",
             request_id: str | None = None) -> list[GroupResult]:
        """Raw and group-normalized rewards per group (``POST /v1/rank``); item failures as in :meth:`score`."""
        body = self._rank_body(groups, model, eps, on_item_error)
        call = _Call("POST", "/v1/rank", body, request_id=request_id)
        resp = self._send(call)
        return self._rank_results(self._json(resp, call), len(body["groups"]), resp, call)

    def judge(
        self,
        items: Iterable[SampleLike] | None = None,
        *,
        judge: str,
        pairs: Iterable[PairLike] | None = None,
        rubric: str | Mapping[str, Any] | None = None,
        references: Sequence[str | None] | None = None,
        on_item_error: OnItemError = "return",
        request_id: str | None = None,
    ) -> list[ItemResult]:
        """Judge samples (``items``) or ``pairs`` with a served judge (``POST /v1/judge``).

        ``rubric`` is a rubric name or an inline rubric; ``references`` one reference answer per
        item or pair (None for none); item failures as in :meth:`score`.
        """
        body, n = self._judge_body(judge, rubric, items, pairs, references, on_item_error)
        call = _Call("POST", "/v1/judge", body, request_id=request_id)
        resp = self._send(call)
        return self._results(self._json(resp, call), n, resp, call)

    def score_many(
        self,
        samples: Sequence[SampleLike],
        *,
        model: str,
        batch_size: int = 64,
        concurrency: int = 4,
        request_id: str | None = None,
    ) -> list[ItemResult]:
        """:meth:`score` over many samples: ``batch_size`` per request, ``concurrency`` requests in
        flight; the results come back in the order of ``samples``.

        Each request gets its own id, ``<request_id>.<k>`` for batch ``k``. The first request that
        fails (after its retries) raises, and requests not yet started are cancelled.
        """
        batches = self._batches(samples, batch_size, concurrency)
        rid = request_id or _new_request_id()
        if not batches:
            return []
        with ThreadPoolExecutor(max_workers=min(concurrency, len(batches)), thread_name_prefix="mmrm-client") as pool:
            futures = [pool.submit(self.score, b, model=model, request_id=f"{rid}.{k}") for k, b in enumerate(batches)]
            try:
                return _reindexed([r for f in futures for r in f.result()])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def models(self) -> list[dict[str, Any]]:
        """The served models and judges (``GET /v1/models``): the ``data`` list of the answer."""
        body = self.request("GET", "/v1/models")
        return list(body.get("data", [])) if isinstance(body, Mapping) else list(body)

    def health(self) -> dict[str, Any]:
        """Liveness (``GET /healthz``), without retries: the body, or :class:`ServiceError`."""
        call = _Call("GET", "/healthz", retry=False)
        resp = self._send(call)
        try:
            body = resp.json()
        except ValueError:
            body = {"status": resp.text}
        return body if isinstance(body, dict) else {"status": body}

    def ready(self) -> bool:
        """Readiness (``GET /readyz``), without retries: True on 2xx, False on 503."""
        try:
            self._send(_Call("GET", "/readyz", retry=False))
        except ServiceError as e:
            if e.status == 503:
                return False
            raise
        return True

    def metrics(self) -> str:
        """The Prometheus exposition text (``GET /metrics``)."""
        return self._send(_Call("GET", "/metrics")).text


class AsyncClient(_BaseClient):
    __doc__ = """Asynchronous client of the mmrm service; mirrors :class:`Client` method for method.

    >>> import asyncio
    >>> async def main():
    ...     async with AsyncClient(base_url="http://127.0.0.1:8000", token=None) as client:
    ...         return client.base_url
    >>> asyncio.run(main())
    'http://127.0.0.1:8000'
    """ + _CLIENT_ARGS_DOC

    def __init__(
        self,
        *,
        base_url: str | None = None,
        token: str | None = UNSET,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        max_retry_time: float = 60.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url=base_url, token=token, timeout=timeout, max_retries=max_retries,
                         max_retry_time=max_retry_time, backoff=backoff, backoff_max=backoff_max, headers=headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        async def attempt() -> httpx.Response:
            resp = await self._http.request(call.method, call.path, content=call.content, headers=call.headers())
            return self._check(resp, call)

        try:
            async for att in tenacity.AsyncRetrying(**self._policy(call).kwargs()):
                with att:
                    resp = await attempt()
            return resp
        except httpx.HTTPError as e:
            raise self._transport_error(e, call) from e

    async def request(self, method: str, path: str, *, json: Any = None, request_id: str | None = None) -> Any:
        """See :meth:`Client.request`."""
        call = _Call(method, path, json, request_id=request_id)
        return self._json(await self._send(call), call)

    async def score(self, samples: Iterable[SampleLike], *, model: str, on_item_error: OnItemError = "return",
                    request_id: str | None = None) -> list[ItemResult]:
        """See :meth:`Client.score`."""
        body = self._score_body(samples, model, on_item_error)
        call = _Call("POST", "/v1/score", body, request_id=request_id)
        resp = await self._send(call)
        return self._results(self._json(resp, call), len(body["items"]), resp, call)

    async def compare(self, pairs: Iterable[PairLike], *, model: str, on_item_error: OnItemError = "return",
                      request_id: str | None = None) -> list[ItemResult]:
        """See :meth:`Client.compare`."""
        body = self._compare_body(pairs, model, on_item_error)
        call = _Call("POST", "/v1/compare", body, request_id=request_id)
        resp = await self._send(call)
        return self._results(self._json(resp, call), len(body["pairs"]), resp, call)

    async def rank(self, groups: Iterable[GroupLike], *, model: str, eps: float = 1e-6,
                   on_item_error: OnItemError = "return", request_id: str | None = None) -> list[GroupResult]:
        """See :meth:`Client.rank`."""
        body = self._rank_body(groups, model, eps, on_item_error)
        call = _Call("POST", "/v1/rank", body, request_id=request_id)
        resp = await self._send(call)
        return self._rank_results(self._json(resp, call), len(body["groups"]), resp, call)

    async def judge(
        self,
        items: Iterable[SampleLike] | None = None,
        *,
        judge: str,
        pairs: Iterable[PairLike] | None = None,
        rubric: str | Mapping[str, Any] | None = None,
        references: Sequence[str | None] | None = None,
        on_item_error: OnItemError = "return",
        request_id: str | None = None,
    ) -> list[ItemResult]:
        """See :meth:`Client.judge`."""
        body, n = self._judge_body(judge, rubric, items, pairs, references, on_item_error)
        call = _Call("POST", "/v1/judge", body, request_id=request_id)
        resp = await self._send(call)
        return self._results(self._json(resp, call), n, resp, call)

    async def score_many(
        self,
        samples: Sequence[SampleLike],
        *,
        model: str,
        batch_size: int = 64,
        concurrency: int = 4,
        request_id: str | None = None,
    ) -> list[ItemResult]:
        """See :meth:`Client.score_many`."""
        batches = self._batches(samples, batch_size, concurrency)
        rid = request_id or _new_request_id()
        sem = asyncio.Semaphore(concurrency)

        async def one(k: int, batch: Sequence[SampleLike]) -> list[ItemResult]:
            async with sem:
                return await self.score(batch, model=model, request_id=f"{rid}.{k}")

        tasks = [asyncio.ensure_future(one(k, b)) for k, b in enumerate(batches)]
        try:
            done = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return _reindexed([r for batch in done for r in batch])

    async def models(self) -> list[dict[str, Any]]:
        """See :meth:`Client.models`."""
        body = await self.request("GET", "/v1/models")
        return list(body.get("data", [])) if isinstance(body, Mapping) else list(body)

    async def health(self) -> dict[str, Any]:
        """See :meth:`Client.health`."""
        resp = await self._send(_Call("GET", "/healthz", retry=False))
        try:
            body = resp.json()
        except ValueError:
            body = {"status": resp.text}
        return body if isinstance(body, dict) else {"status": body}

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        try:
            await self._send(_Call("GET", "/readyz", retry=False))
        except ServiceError as e:
            if e.status == 503:
                return False
            raise
        return True

    async def metrics(self) -> str:
        """See :meth:`Client.metrics`."""
        return (await self._send(_Call("GET", "/metrics"))).text


# --------------------------------------------------------------------------------------------------
# A served model or judge as a Scorer


class RemoteScorer:
    """A reward model (``model=``) or judge (``judge=``, optionally ``rubric=``) served by mmrm, as a
    :class:`~mmrm.rm.scorer.Scorer`: the same three operations and the same results as in process.

    Large calls are split into ``batch_size`` items per request, ``concurrency`` requests in flight;
    results come back in input order. An item the service cannot score is that item's invalid
    result; a request that fails as a whole (after the client's retries) raises its
    :class:`ServiceError` or :class:`TransportError`. A reward model reads no references (they are
    accepted and ignored, as in process); a judge gets them as text.

    ``provenance`` comes from the service's model card (``GET /v1/models``, asked once): its
    fingerprint, engine and dtype, so a served checkpoint and the same checkpoint in process are
    told apart only when they differ. A service that does not answer gives a provenance keyed by its
    URL and name (logged).

    >>> scorer = RemoteScorer(Client(base_url="http://rm:8000"), model="rm-small")  # doctest: +SKIP
    >>> scorer.score([Sample(prompt="2+2?", response="4")])[0].value                 # doctest: +SKIP
    1.73
    """

    def __init__(self, client: Client, *, model: str | None = None, judge: str | None = None,
                 rubric: str | Mapping[str, Any] | None = None, batch_size: int = 64, concurrency: int = 4) -> None:
        if (model is None) == (judge is None):
            raise ValueError("RemoteScorer needs exactly one of model= (a served reward model) and judge= (a served judge)")
        if rubric is not None and judge is None:
            raise ValueError("rubric= goes with judge=; a reward model has no rubric")
        if batch_size < 1 or concurrency < 1:
            raise ValueError(f"batch_size and concurrency must be >= 1, got {batch_size} and {concurrency}")
        self.client = client
        self.model, self.judge, self.rubric = model, judge, rubric
        self.kind: Literal["reward_model", "judge"] = "reward_model" if model is not None else "judge"
        self.name: str = model or judge  # type: ignore[assignment]
        self.batch_size, self.concurrency = batch_size, concurrency
        self._provenance: Provenance | None = None
        self._lock = threading.Lock()

    @property
    def provenance(self) -> Provenance:
        """Which scorer this is, from the service's model card (asked once)."""
        with self._lock:
            if self._provenance is None:
                self._provenance = self._provenance_of(self._card())
            return self._provenance

    def _card(self) -> dict[str, Any] | None:
        try:
            # One attempt: a card is an identity, not worth a minute of retries against a dead service.
            resp = self.client._send(_Call("GET", "/v1/models", retry=False))
            cards = resp.json().get("data", [])
        except (MmrmError, ValueError, AttributeError) as e:
            log.warning("GET %s/v1/models failed (%s); %r is identified by its URL and name only",
                        self.client.base_url, e, self.name)
            return None
        card = next((c for c in cards if isinstance(c, Mapping) and c.get("id") == self.name), None)
        if card is None:
            log.warning("%s/v1/models does not list %r; it is identified by its URL and name only", self.client.base_url, self.name)
        return card

    def _provenance_of(self, card: Mapping[str, Any] | None) -> Provenance:

        fp = (card or {}).get("fingerprint")
        if fp is None:
            fp = "url-" + _digest(self.client.base_url, self.name, self.rubric)
        elif self.rubric is not None:  # the card's fingerprint is of the judge's default rubric
            fp = _digest(fp, self.rubric)
        return Provenance(scorer=self.name, kind=self.kind, fingerprint=str(fp), engine=str((card or {}).get("engine") or "service"), dtype=(card or {}).get("dtype"))

    # ---- the Scorer operations

    def score(self, samples: Samples, *, references: References = None) -> list[ItemResult]:
        """One result per sample, in order (``/v1/score``, or ``/v1/judge`` for a judge)."""
        if self.model is not None:
            return self._map(lambda idx: self.client.score([samples[i] for i in idx], model=self.name), len(samples))
        refs = _ref_texts(references, len(samples))
        return self._map(lambda idx: self.client.judge([samples[i] for i in idx], judge=self.name, rubric=self.rubric,
                                                       references=None if refs is None else [refs[i] for i in idx]),
                         len(samples))

    def compare(self, pairs: Pairs, *, references: References = None) -> list[ItemResult]:
        """One result per pair, in order; ``value`` = P(A > B) (``/v1/compare``, or ``/v1/judge``)."""
        if self.model is not None:
            return self._map(lambda idx: self.client.compare([pairs[i] for i in idx], model=self.name), len(pairs))
        refs = _ref_texts(references, len(pairs))
        return self._map(lambda idx: self.client.judge(pairs=[pairs[i] for i in idx], judge=self.name, rubric=self.rubric,
                                                       references=None if refs is None else [refs[i] for i in idx]),
                         len(pairs))

    def rank(self, groups: Groups, *, references: References = None, eps: float = 1e-6) -> list[GroupResult]:
        """One :class:`~mmrm.rm.scorer.GroupResult` per group (``/v1/rank``; a judge scores every
        response pointwise and the groups are normalized here, the same formula)."""
        if self.model is None:
            return rank_pointwise(self.score, groups, references=references, eps=eps)
        spans = [list(range(a, min(len(groups), a + self.batch_size))) for a in range(0, len(groups), self.batch_size)]
        parts = self._parallel([lambda idx=idx: self.client.rank([groups[i] for i in idx], model=self.name, eps=eps)
                                for idx in spans])
        return [g for p in parts for g in p]

    def _map(self, call: Any, n: int) -> list[ItemResult]:
        spans = [list(range(a, min(n, a + self.batch_size))) for a in range(0, n, self.batch_size)]
        return _reindexed([r for part in self._parallel([lambda idx=idx: call(idx) for idx in spans]) for r in part])

    def _parallel(self, calls: list[Any]) -> list[Any]:
        if len(calls) <= 1:
            return [c() for c in calls]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(calls)), thread_name_prefix="mmrm-remote") as pool:
            futures = [pool.submit(c) for c in calls]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        """Close the client."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RemoteScorer({self.kind} {self.name!r} at {self.client.base_url})"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ref_texts(references: References, n: int) -> list[str | None] | None:
    """References as the wire takes them: text (a message or content parts become their text)."""
    if references is None:
        return None
    if len(references) != n:
        raise ValueError(f"got {len(references)} references for {n} items; give one per item (None for none)")
    return [r if r is None or isinstance(r, str) else as_response(r).text for r in references]
