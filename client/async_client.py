"""The asynchronous client of the mmrm service (:class:`AsyncClient`, asyncio): mirrors
:class:`~mmrm.client.Client` method for method, with the same retry rules (:mod:`mmrm.client.retry`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
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

__all__ = ["AsyncClient"]


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
            async for att in self._policy(call).aretrying(self._what(call)):
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
