"""The synchronous client of the mmrm service (:class:`Client`): thread-safe, one connection pool.

The reliability rules (retries, request ids, auth) are in :mod:`mmrm.client`'s docstring and
:mod:`mmrm.client.retry`; :class:`~mmrm.client.AsyncClient` mirrors this class method for method.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mmrm.client.base import (
    _CLIENT_ARGS_DOC,
    DEFAULT_TIMEOUT,
    UNSET,
    GroupLike,
    PairLike,
    SampleLike,
    TimeoutTypes,
    _BaseClient,
    _Call,
    _new_request_id,
    _reindexed,
)
from mmrm.client.errors import ServiceError
from mmrm.rm.protocol import ItemResult, OnItemError
from mmrm.rm.scorer import GroupResult

__all__ = ["Client"]


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
            for att in self._policy(call).retrying(self._what(call)):
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
