"""mmrm.client against a real HTTP server on 127.0.0.1 that scripts its answers.

The server is the standard library's threading HTTP server: each test queues the answers it wants
(status, headers, body) and reads back what the client sent (path, headers, JSON body, arrival time).
When the queue is empty the server answers like the mmrm service would, from the request body.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

import pytest
from helpers import free_port, serve_in_thread

from mmrm.client import AsyncClient, Client, RemoteScorer, ServiceError, TransportError
from mmrm.rm.errors import InvalidInput, MmrmError
from mmrm.rm.protocol import ItemResult
from mmrm.rm.scorer import GroupResult, Scorer
from mmrm.rm.types import Group, Pair, Sample, ScoreResult

PROV = {"scorer": "rm-test", "kind": "reward_model", "fingerprint": "abc", "mmrm_version": "0.1.0", "engine": "hf"}


def _reward_of(item: dict[str, Any]) -> float:
    """The scripted 'model': the reward is the number written in the response text."""
    content = item["response"]["content"]
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return float(text)


def _envelope(obj: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "score-0123", "object": obj, "created": int(time.time()), "model": "rm-test", "data": data,
            "usage": {"items": len(data)}}


def default_answer(path: str, body: Any) -> tuple[int, dict[str, str], Any]:
    if path == "/v1/score":
        data = [{"index": i, "value": _reward_of(it), "provenance": PROV, "details": {"future_field": 1}}
                for i, it in enumerate(body["items"])]
        return 200, {}, _envelope("score", data)
    if path == "/v1/compare":
        data = [{"index": i, "value": 0.75, "prob_a_wins": 0.75, "provenance": PROV} for i in range(len(body["pairs"]))]
        return 200, {}, _envelope("compare", data)
    if path == "/v1/rank":
        data = [{"index": i, "results": [{"value": float(k), "provenance": PROV} for k in range(len(g["responses"]))],
                 "normalized": [-1.0, 1.0][: len(g["responses"])]} for i, g in enumerate(body["groups"])]
        return 200, {}, _envelope("rank", data)
    if path == "/v1/judge":
        n = len(body.get("items") or body.get("pairs"))
        data = [{"index": i, "value": 7.0, "provenance": {**PROV, "kind": "judge"}} for i in range(n)]
        return 200, {}, _envelope("judge", data)
    if path == "/v1/models":
        return 200, {}, {"object": "list", "data": [{"id": "rm-test", "object": "model"}]}
    if path == "/healthz":
        return 200, {}, {"status": "ok"}
    if path == "/readyz":
        return 503, {"Retry-After": "1"}, {"error": {"kind": "not_ready", "message": "loading"}}
    return 404, {}, {"error": {"kind": "not_found", "message": path}}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Script:
    answers: deque = field(default_factory=deque)  # (status, headers, body) or a callable(path, body)
    seen: list[Seen] = field(default_factory=list)
    delay: Callable[[str, Any], float] | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Server:
    def __init__(self, port: int = 0) -> None:
        self.script = Script()
        script = self.script

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:  # keep pytest output clean
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                with script.lock:
                    script.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                            body, time.monotonic()))
                    script.in_flight += 1
                    script.max_in_flight = max(script.max_in_flight, script.in_flight)
                    answer = script.answers.popleft() if script.answers else None
                try:
                    if script.delay:
                        time.sleep(script.delay(self.path, body))
                    if answer is None:
                        status, headers, payload = default_answer(self.path, body)
                    elif callable(answer):
                        status, headers, payload = answer(self.path, body)
                    else:
                        status, headers, payload = answer
                finally:
                    with script.lock:
                        script.in_flight -= 1
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if "x-request-id" in {k.lower() for k in self.headers.keys()}:
                    self.send_header("X-Request-Id", self.headers["X-Request-Id"])
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

        self.httpd = serve_in_thread(Handler, port)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def samples(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i}", "response": str(i)} for i in range(n)]


def slow_first_batches(path: str, body: Any) -> float:
    # Later batches answer faster, so completion order differs from submission order.
    if path != "/v1/score":
        return 0.0
    return 0.3 if _reward_of(body["items"][0]) < 20 else 0.05


def fast(url: str, **kw: Any) -> dict[str, Any]:
    return dict(base_url=url, token=None, backoff=0.05, backoff_max=0.2, **kw)


# --------------------------------------------------------------------------------------------------


def test_import_is_light():
    code = "import mmrm.client, sys; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", ["mmrm.rm.types", "mmrm.rm.errors", "mmrm.rm.protocol", "mmrm.rm.scorer"])
def test_contract_modules_import_without_torch_or_ray(module: str):
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, (module, out.stdout, out.stderr)


def test_score_roundtrip_auth_and_body(server: Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MMRM_API_TOKEN", "s3cret")
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with Client(base_url=server.url) as c:
        res = c.score([Sample(prompt=[{"role": "user", "content": [img, {"type": "text", "text": "hi"}]}], response="2"),
                       {"prompt": "q", "response": "3"}], model="rm-test")
    assert [r.value for r in res] == [2.0, 3.0]
    assert all(isinstance(r, ScoreResult) and r.provenance.scorer == "rm-test" for r in res)
    seen = server.script.seen[0]
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["x-request-id"]
    assert seen.body["model"] == "rm-test"
    part = seen.body["items"][0]["prompt"][0]["content"][0]
    assert part == img  # no "detail": null, types kept
    assert seen.body["items"][1] == {"prompt": [{"role": "user", "content": "q"}],
                                     "response": {"role": "assistant", "content": "3"}}


def test_token_none_sends_no_auth(server: Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MMRM_API_TOKEN", "s3cret")
    with Client(base_url=server.url, token=None) as c:
        c.score(samples(1), model="m")
    assert "authorization" not in server.script.seen[0].headers


def test_503_retry_after_then_200_reuses_request_id(server: Server):
    server.script.answers.append((503, {"Retry-After": "1"}, {"error": {"kind": "overloaded", "message": "busy"}}))
    with Client(**fast(server.url)) as c:
        res = c.score(samples(2), model="m")
    assert [r.value for r in res] == [0.0, 1.0]
    first, second = server.script.seen
    assert second.at - first.at >= 1.0
    assert first.headers["x-request-id"] == second.headers["x-request-id"]


def test_429_http_date_retry_after(server: Server):
    # An HTTP date one second ahead (the header has whole seconds, so the wait is 0..1 s; not negative).
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 1))
    server.script.answers.append((429, {"Retry-After": date}, {"error": {"kind": "rate_limited", "message": "slow down"}}))
    server.script.answers.append((429, {}, {"error": {"kind": "rate_limited", "message": "slow down"}}))
    with Client(**fast(server.url)) as c:
        assert [r.value for r in c.score(samples(1), model="m")] == [0.0]
    assert len(server.script.seen) == 3
    assert len({s.headers["x-request-id"] for s in server.script.seen}) == 1


def test_connection_refused_then_server_up():
    port = free_port()
    holder: dict[str, Server] = {}
    t = threading.Timer(0.6, lambda: holder.setdefault("s", Server(port)))
    t.start()
    try:
        with Client(**fast(f"http://127.0.0.1:{port}", max_retries=30, max_retry_time=10)) as c:
            t0 = time.monotonic()
            res = c.score(samples(1), model="m")
        assert res[0].value == 0.0 and time.monotonic() - t0 >= 0.5
    finally:
        t.join()
        if "s" in holder:
            holder["s"].stop()


def test_connection_refused_gives_typed_error_after_retries():
    with Client(**fast(f"http://127.0.0.1:{free_port()}", max_retries=2)) as c:
        with pytest.raises(TransportError) as ei:
            c.score(samples(1), model="m", request_id="rid-1")
    assert ei.value.request_id == "rid-1" and isinstance(ei.value, MmrmError)


def test_422_is_not_retried_and_is_typed(server: Server):
    err = {"error": {"kind": "limit_exceeded", "message": "image too large", "field": "items[0].response.content[0]",
                     "limit": 1048576}}
    server.script.answers.append((422, {}, err))
    with Client(**fast(server.url)) as c:
        with pytest.raises(ServiceError) as ei:
            c.score(samples(1), model="m")
    e = ei.value
    assert (e.status, e.kind, e.field, e.limit) == (422, "limit_exceeded", "items[0].response.content[0]", 1048576)
    assert "image too large" in e.message and isinstance(e, MmrmError)
    assert e.request_id == server.script.seen[0].headers["x-request-id"]
    assert len(server.script.seen) == 1


def test_500_not_retried_non_json_body(server: Server):
    server.script.answers.append((500, {}, "internal oops"))
    with Client(**fast(server.url)) as c:
        with pytest.raises(ServiceError) as ei:
            c.score(samples(1), model="m")
    assert ei.value.status == 500 and ei.value.kind == "http_500" and len(server.script.seen) == 1


def test_504_is_never_retried_and_502_is(server: Server):
    # A 504 is the service's request deadline: re-sending the same request would redo (and stack) the
    # abandoned work, so the client raises at once, however large its retry budget.
    deadline = (504, {}, {"error": {"kind": "timeout", "message": "request deadline of 120 s exceeded"}})
    server.script.answers.append(deadline)
    with Client(**fast(server.url, max_retries=10, max_retry_time=60)) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as ei:
            c.score(samples(1), model="m")
        assert time.monotonic() - t0 < 1.0
        assert (ei.value.status, ei.value.kind, ei.value.retryable) == (504, "timeout", False)
        assert len(server.script.seen) == 1
        # a gateway's 502 is transient: retried, and the next answer is the service's
        server.script.answers.append((502, {}, "bad gateway"))
        assert [r.value for r in c.score(samples(1), model="m")] == [0.0]
    assert [s.path for s in server.script.seen] == ["/v1/score"] * 3


def test_async_504_is_never_retried(server: Server):
    server.script.answers.append((504, {}, {"error": {"kind": "timeout", "message": "deadline"}}))

    async def main() -> None:
        async with AsyncClient(**fast(server.url, max_retries=10, max_retry_time=60)) as c:
            with pytest.raises(ServiceError) as ei:
                await c.score(samples(1), model="m")
            assert ei.value.status == 504

    asyncio.run(main())
    assert len(server.script.seen) == 1


def test_total_retry_time_cap(server: Server):
    busy = (503, {"Retry-After": "1"}, {"error": {"kind": "overloaded", "message": "busy"}})
    server.script.answers.extend([busy] * 20)
    with Client(**fast(server.url, max_retries=50, max_retry_time=2.5)) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError) as ei:
            c.score(samples(1), model="m")
        took = time.monotonic() - t0
    assert ei.value.status == 503 and ei.value.kind == "overloaded" and ei.value.retry_after == 1.0
    assert took < 3.5
    assert 2 <= len(server.script.seen) <= 3


def test_retry_after_beyond_budget_stops_at_once(server: Server):
    server.script.answers.append((503, {"Retry-After": "30"}, {"error": {"kind": "overloaded", "message": "busy"}}))
    with Client(**fast(server.url, max_retry_time=5)) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError):
            c.score(samples(1), model="m")
    assert time.monotonic() - t0 < 1.0 and len(server.script.seen) == 1


def test_local_validation_names_the_field(server: Server):
    with Client(**fast(server.url)) as c:
        with pytest.raises(InvalidInput) as ei:
            c.score([{"prompt": "q", "response": "1"}, {"prompt": "q"}], model="m")
    assert ei.value.field.startswith("items[1]")
    assert server.script.seen == []


def test_score_many_order_and_concurrency(server: Server):
    server.script.delay = slow_first_batches
    with Client(**fast(server.url)) as c:
        res = c.score_many(samples(50), model="m", batch_size=10, concurrency=4, request_id="job")
    assert [r.value for r in res] == [float(i) for i in range(50)]
    assert len(server.script.seen) == 5
    assert 2 <= server.script.max_in_flight <= 4
    assert sorted(s.headers["x-request-id"] for s in server.script.seen) == [f"job.{k}" for k in range(5)]


def test_score_many_propagates_first_error(server: Server):
    def answer(path: str, body: Any):
        if _reward_of(body["items"][0]) == 10:
            return 422, {}, {"error": {"kind": "invalid_input", "message": "bad", "field": "items[0]"}}
        return default_answer(path, body)

    server.script.answers.extend([answer] * 3)
    with Client(**fast(server.url)) as c:
        with pytest.raises(ServiceError) as ei:
            c.score_many(samples(30), model="m", batch_size=10, concurrency=1)
    assert ei.value.status == 422


def test_compare_rank_judge_models_health(server: Server):
    with Client(**fast(server.url)) as c:
        cmp = c.compare([{"prompt": "q", "response_a": "a", "response_b": "b"}], model="m")
        assert cmp[0].prob_a_wins == 0.75
        rk = c.rank([{"prompt": "q", "responses": ["a", "b"]}], model="m")
        assert isinstance(rk[0], GroupResult) and [r.value for r in rk[0].results] == [0.0, 1.0]
        assert rk[0].normalized == [-1.0, 1.0]
        jd = c.judge(samples(2), judge="j", rubric="helpfulness", references=["x", None])
        assert [r.value for r in jd] == [7.0, 7.0]
        assert c.models() == [{"id": "rm-test", "object": "model"}]
        assert c.health() == {"status": "ok"}
        assert c.ready() is False
    by_path = {s.path: s for s in server.script.seen}
    assert by_path["/v1/judge"].body["rubric"] == "helpfulness"
    assert by_path["/v1/judge"].body["references"] == ["x", None]
    assert "mode" not in by_path["/v1/judge"].body  # the server forbids unknown fields
    assert [s.path for s in server.script.seen].count("/readyz") == 1  # readiness is never retried


def test_bodies_are_the_protocol_requests_the_server_accepts(server: Server):
    """What the client sends validates as the server's own request models (extra fields forbidden)."""
    from mmrm.rm.protocol import CompareRequest, JudgeRequest, RankRequest, ScoreRequest

    with Client(**fast(server.url)) as c:
        c.score(samples(2), model="m", on_item_error="fail")
        c.compare([{"prompt": "q", "response_a": "a", "response_b": "b"}], model="m")
        c.rank([{"prompt": "q", "responses": ["a", "b"]}], model="m", eps=0.01)
        c.judge(pairs=[{"prompt": "q", "response_a": "a", "response_b": "b"}], judge="j", references=["ref"])
        with pytest.raises(TypeError):
            c.judge(samples(1), judge="j", mode="pointwise")  # type: ignore[call-arg]  # no such field on the wire
        with pytest.raises(ValueError, match="references"):
            c.judge(samples(2), judge="j", references=["only one"])  # checked before any traffic
    score, compare, rank, judge = (s.body for s in server.script.seen)
    assert ScoreRequest.model_validate(score).on_item_error == "fail"
    assert "on_item_error" not in compare and CompareRequest.model_validate(compare).on_item_error == "return"
    assert RankRequest.model_validate(rank).eps == 0.01
    assert JudgeRequest.model_validate(judge).references == ["ref"]
    assert len(server.script.seen) == 4


def test_per_item_invalid_results_are_results_not_errors(server: Server):
    prov = PROV
    data = [{"index": 1, "value": None, "invalid": "the image is not decodable", "error_kind": "invalid_media",
             "field": "items[1].prompt[0].content[0].image_url", "limit": None, "provenance": prov},
            {"index": 0, "value": 0.5, "provenance": prov},
            {"index": 2, "value": None, "invalid": "new kind", "error_kind": "a_kind_from_the_future", "provenance": prov}]
    server.script.answers.append((200, {}, _envelope("score", data)))
    with Client(**fast(server.url)) as c:
        res = c.score(samples(3), model="m")
    assert all(isinstance(r, ItemResult) and isinstance(r, ScoreResult) for r in res)
    assert [r.index for r in res] == [0, 1, 2] and res[0].value == 0.5
    assert (res[1].ok, res[1].error_kind, res[1].field) == (False, "invalid_media", "items[1].prompt[0].content[0].image_url")
    assert res[2].error_kind == "service_error"  # an unknown kind reads as a service error, never a crash
    with pytest.raises(MmrmError, match="not decodable"):
        res[1].raise_for_invalid()


def test_text_utf8_cannot_carry_goes_escaped(server: Server):
    with Client(**fast(server.url)) as c:
        c.score([{"prompt": "bad \ud800 text", "response": "1"}, {"prompt": "caf\u00e9", "response": "2"}], model="m")
    seen = server.script.seen[0]
    assert seen.body["items"][0]["prompt"][0]["content"] == "bad \ud800 text"  # arrived as the same (escaped) text
    assert seen.body["items"][1]["prompt"][0]["content"] == "caf\u00e9"


def test_remote_scorer_is_a_scorer_batches_in_order_with_the_cards_provenance(server: Server):
    cards = {"object": "list", "data": [{"id": "rm-test", "object": "model", "kind": "reward_model",
                                         "fingerprint": "f" * 16, "engine": "hf", "dtype": "float32"}]}
    server.script.answers.append((200, {}, cards))
    with Client(**fast(server.url)) as c:
        scorer = RemoteScorer(c, model="rm-test", batch_size=4, concurrency=2)
        assert isinstance(scorer, Scorer)
        prov = scorer.provenance
        assert (prov.scorer, prov.kind, prov.fingerprint, prov.engine, prov.dtype) == ("rm-test", "reward_model", "f" * 16, "hf", "float32")
        res = scorer.score([Sample.model_validate(x) for x in samples(10)], references=["ignored"] * 10)
        assert [r.value for r in res] == [float(i) for i in range(10)] and [r.index for r in res] == list(range(10))
        assert len(scorer.compare([Pair(prompt="q", response_a="a", response_b="b")] * 5)) == 5
        groups = scorer.rank([Group(prompt="q", responses=["a", "b"])] * 5)
        assert len(groups) == 5 and all(isinstance(g, GroupResult) for g in groups)
        assert scorer.score([]) == []
        judge = RemoteScorer(c, judge="j", rubric="helpfulness")
        ranked = judge.rank([Group(prompt="q", responses=["a", "b", "c"])], references=["ref"])
        assert ranked[0].values == [7.0, 7.0, 7.0] and ranked[0].normalized == [0.0, 0.0, 0.0]
    paths = [s.path for s in server.script.seen]
    assert paths.count("/v1/models") == 1  # asked once, when the provenance was first read (never for the judge here)
    assert paths.count("/v1/score") == 3 and paths.count("/v1/compare") == 2 and paths.count("/v1/rank") == 2
    assert all("references" not in s.body for s in server.script.seen if s.path == "/v1/score")
    [jb] = [s.body for s in server.script.seen if s.path == "/v1/judge"]
    assert jb["references"] == ["ref", "ref", "ref"] and jb["rubric"] == "helpfulness"


def test_remote_scorer_without_a_card_is_keyed_by_url_and_name(server: Server):
    with Client(**fast(f"http://127.0.0.1:{free_port()}", max_retries=0)) as c:
        a = RemoteScorer(c, model="m").provenance
        b = RemoteScorer(c, judge="m", rubric="vqa").provenance
    assert a.fingerprint.startswith("url-") and a.fingerprint != b.fingerprint and a.engine == "service"
    with pytest.raises(ValueError, match="exactly one"):
        RemoteScorer(c, model="m", judge="j")


def test_bad_response_is_typed(server: Server):
    server.script.answers.append((200, {}, _envelope("score", [])))
    with Client(**fast(server.url)) as c:
        with pytest.raises(ServiceError, match="expected 1 result"):
            c.score(samples(1), model="m")


# --------------------------------------------------------------------------------------------------
# The async client does the same


def test_async_client_mirrors_sync(server: Server):
    server.script.answers.append((503, {"Retry-After": "1"}, {"error": {"kind": "overloaded", "message": "busy"}}))
    server.script.answers.append(default_answer)
    server.script.answers.append((422, {}, {"error": {"kind": "invalid_input", "message": "no", "field": "items[0]",
                                                      "limit": None}}))

    async def main() -> None:
        async with AsyncClient(**fast(server.url)) as c:
            res = await c.score(samples(3), model="m")
            assert [r.value for r in res] == [0.0, 1.0, 2.0]
            with pytest.raises(ServiceError) as ei:
                await c.score(samples(1), model="m")
            assert ei.value.status == 422 and ei.value.field == "items[0]"
            server.script.delay = slow_first_batches
            many = await c.score_many(samples(50), model="m", batch_size=10, concurrency=4)
            assert [r.value for r in many] == [float(i) for i in range(50)]
            assert (await c.compare([{"prompt": "q", "response_a": "a", "response_b": "b"}], model="m"))[0].value == 0.75
            assert (await c.rank([{"prompt": "q", "responses": ["a"]}], model="m"))[0].normalized == [-1.0]
            assert (await c.health())["status"] == "ok"
            assert await c.models() == [{"id": "rm-test", "object": "model"}]

    asyncio.run(main())
    first, second = server.script.seen[:2]
    assert second.at - first.at >= 1.0
    assert first.headers["x-request-id"] == second.headers["x-request-id"]
    assert len(server.script.seen) == 3 + 5 + 4
    assert 2 <= server.script.max_in_flight <= 4


def test_async_connection_refused_then_up_and_cap():
    port = free_port()
    holder: dict[str, Server] = {}

    async def main() -> None:
        async with AsyncClient(**fast(f"http://127.0.0.1:{port}", max_retries=30, max_retry_time=10)) as c:
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, lambda: holder.setdefault("s", Server(port)))
            assert (await c.score(samples(1), model="m"))[0].value == 0.0
        async with AsyncClient(**fast(f"http://127.0.0.1:{free_port()}", max_retries=100, max_retry_time=0.6)) as c:
            t0 = time.monotonic()
            with pytest.raises(TransportError):
                await c.score(samples(1), model="m")
            assert time.monotonic() - t0 < 1.5

    try:
        asyncio.run(main())
    finally:
        if "s" in holder:
            holder["s"].stop()


def test_argument_checks():
    with pytest.raises(ValueError, match="max_retries"):
        Client(base_url="http://127.0.0.1:1", max_retries=-1)
    with pytest.raises(TypeError):
        Client("http://127.0.0.1:1")  # type: ignore[misc]  # keyword-only
    with Client(base_url="http://127.0.0.1:1/", token=None) as c:
        assert c.base_url == "http://127.0.0.1:1"
        with pytest.raises(ValueError, match="exactly one"):
            c.judge(judge="j")
        with pytest.raises(ValueError, match="batch_size"):
            c.score_many(samples(1), model="m", batch_size=0)


@pytest.mark.parametrize("module", ["mmrm.client.errors", "mmrm.client.retry", "mmrm.client.sync_client",
                                    "mmrm.client.async_client"])
def test_docstring_examples_run(module: str):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0


# --------------------------------------------------------------------------------------------------
# Against the live service: a batch with every kind of item failure


def _mixed_items(media_root) -> tuple[list[dict[str, Any]], dict[int, tuple[str, str]]]:
    """Good items between one bad item of each kind; index -> (error_kind, field suffix) of the bad."""
    from helpers import image_part, image_uri, text_part

    user = lambda *parts: [{"role": "user", "content": list(parts)}]  # noqa: E731
    items = [
        {"prompt": "Describe the weather.", "response": "Sunny and warm."},
        {"prompt": user(image_part("data:image/png;base64," + "QUJD" * 40), text_part("What is it?")), "response": "A cat."},
        {"prompt": user(image_part(image_uri(56, 56, 1)), text_part("Which digit?")), "response": "The digit is 6."},
        {"prompt": user(image_part("/etc/hostname"), text_part("What is it?")), "response": "A cat."},
        {"prompt": "word " * 4200, "response": "ok"},
        {"prompt": user(text_part("look <|image_pad|> here")), "response": "fine"},
        {"prompt": "bad \ud800 text", "response": "fine"},
        {"prompt": "What is 2+2?", "response": "4"},
    ]
    bad = {1: ("invalid_media", ".prompt[0].content[0].image_url"), 3: ("media_forbidden", ".prompt[0].content[0].image_url"),
           4: ("input_too_long", ".messages"), 5: ("unsupported_input", ".prompt[0].content[0].text"),
           6: ("invalid_input", ".prompt[0].content")}
    return items, bad


@pytest.mark.slow
def test_live_service_mixed_failures_are_per_item_results(service: dict):
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    items, bad = _mixed_items(service["media_root"])
    rm = RewardModel.from_pretrained(service["checkpoint"], device="cpu", media_policy=MediaPolicy())
    with Client(base_url=service["url"], token=service["token"], max_retries=2) as c:
        res = c.score(items, model="tiny", request_id="mixed-1")
        assert len(res) == len(items) and [r.index for r in res] == list(range(len(items)))
        for i, it in enumerate(items):
            r = res[i]
            if i in bad:
                kind, suffix = bad[i]
                assert not r.ok and (r.error_kind, r.field) == (kind, f"items[{i}]{suffix}"), (i, r.invalid)
            else:  # independent expectation: the sample alone, in process
                assert r.ok and abs(r.value - rm.rewards([Sample.model_validate(it)])[0]) < 1e-5, i
        assert res[4].limit == 4096
        # the same through a RemoteScorer (the Scorer contract), and a pair with one bad side
        scorer = RemoteScorer(c, model="tiny")
        assert [r.error_kind for r in scorer.score([Sample.model_validate(it) for it in items])] == [r.error_kind for r in res]
        pairs = [{"prompt": "q", "response_a": "fine", "response_b": "also fine"},
                 {"prompt": items[5]["prompt"], "response_a": "a", "response_b": "b"}]
        cmp = c.compare(pairs, model="tiny")
        assert cmp[0].ok and not cmp[1].ok and cmp[1].error_kind == "unsupported_input"
        # on_item_error="fail": the first failed item fails the request, naming its field
        with pytest.raises(ServiceError) as ei:
            c.score(items[:3], model="tiny", on_item_error="fail")
        assert ei.value.status == 422 and ei.value.field == "items[1].prompt[0].content[0].image_url"
