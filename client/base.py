"""What :class:`~mmrm.client.Client` and :class:`~mmrm.client.AsyncClient` share: configuration,
request bodies built from the wire protocol's models, and lenient reading of the answers.

Pure code (no I/O): the two clients differ only in how they send (:mod:`mmrm.client.sync_client`,
:mod:`mmrm.client.async_client`); the retry rules are :mod:`mmrm.client.retry`'s.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import httpx
from pydantic import BaseModel, ValidationError

from mmrm.client.errors import BadResponse, ServiceError, TransportError
from mmrm.client.retry import RetryPolicy, parse_retry_after
from mmrm.rm.errors import ERROR_KINDS, InvalidInput
from mmrm.rm.protocol import CompareRequest, ItemResult, JudgeRequest, OnItemError, RankRequest, ScoreRequest
from mmrm.rm.scorer import GroupResult
from mmrm.rm.types import Group, Pair, Provenance, Sample


#: A sample given as the model or as a dict of the same shape.
SampleLike = Union[Sample, Mapping[str, Any]]
PairLike = Union[Pair, Mapping[str, Any]]
GroupLike = Union[Group, Mapping[str, Any]]
TimeoutTypes = Union[float, None, httpx.Timeout]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
TOKEN_ENV = "MMRM_API_TOKEN"
BASE_URL_ENV = "MMRM_BASE_URL"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Sentinel telling "not given" (read the environment) from ``None`` (explicitly none).
UNSET: Any = _Unset()


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
        self.retry_policy = RetryPolicy(max_retries=max_retries, max_retry_time=max_retry_time, backoff=backoff,
                                        backoff_max=backoff_max)  # validates them
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

    def _policy(self, call: _Call) -> RetryPolicy:
        return self.retry_policy if call.retry else self.retry_policy.without_retries()

    @staticmethod
    def _what(call: _Call) -> str:
        """How a call is named in the retry log lines (the request id correlates with the service's logs)."""
        return f"mmrm {call.method} {call.path} (request {call.request_id})"

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
        max_retries: retries after the first attempt (429/502/503, connection errors, timeouts; never
            504: see :mod:`mmrm.client.retry`).
        max_retry_time: no attempt starts later than this many seconds after the first one.
        backoff, backoff_max: exponential backoff base and cap in seconds (jittered) when the
            server sends no ``Retry-After``.
        headers: extra headers sent with every request.
        transport: an httpx transport (tests, proxies, unix sockets).
"""

