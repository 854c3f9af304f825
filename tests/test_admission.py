"""Admission and the body deadline in the ingress app itself (no Ray: the real FastAPI app of the
ingress with a stand-in replica, driven in process through httpx's ASGI transport, with request
bodies that arrive slowly or never).

A request counts against ``admission.max_inflight`` only once its body is complete; while its body
arrives it takes one of ``admission.max_body_reads`` places, and a body not complete within
``limits.body_timeout_s`` is a 408. The live counterpart (raw sockets through Serve's proxy) is
``test_slow_bodies.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mmrm.rm.types import Provenance, ScoreResult
from mmrm.serve.config import ServiceConfig
from mmrm.serve.ingress import build_fastapi

PROV = Provenance(scorer="tiny", kind="reward_model", fingerprint="f", mmrm_version="0", engine="hf", dtype="float32")
BODY = json.dumps({"model": "tiny", "items": [{"prompt": "p", "response": "r"}]}).encode()


class Replica:
    """Stands in for a Serve handle; ``score.remote`` holds each call until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.score = self
        self.info = self

    def remote(self, samples: list, *_: Any) -> Any:
        async def run() -> dict:
            await self.release.wait()
            return {"results": [ScoreResult(value=0.5, provenance=PROV).model_dump(mode="json") for _ in samples],
                    "batch_sizes": [len(samples)], "queue_depth": 0}

        return run()


def _app(replica: Replica, **admission: Any) -> Any:
    cfg = ServiceConfig.model_validate({"models": [{"name": "tiny", "checkpoint": "/nowhere"}],
                                        "limits": {"body_timeout_s": 1.0},
                                        "admission": {"max_inflight": 2, **admission}})
    return build_fastapi(cfg, {"tiny": replica}, {})


async def _stalled() -> AsyncIterator[bytes]:
    yield BODY[:5]
    await asyncio.sleep(30)  # never completes within the body deadline
    yield BODY[5:]


def test_stalled_bodies_take_no_slot_and_get_408() -> None:
    async def run() -> None:
        app = _app(Replica(), max_body_reads=8)  # room for every stalled body: none may take a slot
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            stalled = [asyncio.create_task(c.post("/v1/score", content=_stalled(),
                                                  headers={"content-type": "application/json"}))
                       for _ in range(6)]  # 3x max_inflight
            await asyncio.sleep(0.2)
            ok = await asyncio.gather(*(c.post("/v1/score", content=BODY, headers={"content-type": "application/json"})
                                        for _ in range(2)))
            assert [r.status_code for r in ok] == [200, 200], [r.text for r in ok]
            for r in await asyncio.gather(*stalled):
                assert r.status_code == 408, r.text
                err = r.json()["error"]
                assert (err["kind"], err["field"], err["limit"]) == ("timeout", "body", 1.0), err
                assert r.headers["connection"] == "close"

    asyncio.run(run())


def test_body_reads_are_bounded_and_full_slots_refuse_before_reading() -> None:
    async def run() -> None:
        replica = Replica()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(replica, max_body_reads=3)),
                                     base_url="http://t") as c:
            post = lambda content: c.post("/v1/score", content=content, headers={"content-type": "application/json"})  # noqa: E731
            stalled = [asyncio.create_task(post(_stalled())) for _ in range(3)]
            await asyncio.sleep(0.2)
            r = await post(BODY)  # a 4th body while 3 arrive: refused at once
            assert r.status_code == 503 and r.json()["error"]["limit"] == 3 and "retry-after" in r.headers, r.text
            await asyncio.gather(*stalled)  # 408s: their places come back
            replica.release.clear()  # the next two hold both slots
            held = [asyncio.create_task(post(BODY)) for _ in range(2)]
            await asyncio.sleep(0.2)
            r = await post(_stalled())  # every slot taken: refused before its body is read
            assert r.status_code == 503 and r.json()["error"]["limit"] == 2, r.text
            replica.release.set()
            assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200]

    asyncio.run(run())


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_default_body_reads_are_four_times_max_inflight(max_inflight: int) -> None:
    cfg = ServiceConfig.model_validate({"models": [{"name": "tiny", "checkpoint": "/nowhere"}],
                                        "admission": {"max_inflight": max_inflight}})
    assert cfg.admission.body_reads == 4 * max_inflight
