"""The ``openai`` judge backend against a real HTTP server on 127.0.0.1 that scripts its answers.

The server speaks the part of the OpenAI chat API the backend reads (``/chat/completions`` with
logprobs); each test queues the statuses it wants and reads back when each request arrived and on
which TCP connection. What is checked here is the HTTP behaviour: the client's retry policy
(``Retry-After`` honoured, 504 and 500 not retried, the retry budget) and one connection pool for
the backend's lifetime. The scores themselves are checked against a real vLLM server in
``test_judges_vllm.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from mmrm.judges import Judge, JudgeOptions
from mmrm.judges.backends.base import GenRequest, LabelRequest
from mmrm.judges.backends.openai import OpenAIJudgeBackend
from mmrm.judges.parsing import ANSWER_OPEN
from mmrm.rm.types import Message, Sample

from helpers import serve_in_thread

#: The scripted model's verdict: P("4") = 0.6, P("5") = 0.4 at the answer slot.
TOP = [{"token": "4", "logprob": -0.5108256237659907}, {"token": "5", "logprob": -0.916290731874155}]


def completion(body: dict[str, Any]) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "length"}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [{"token": "4", "logprob": TOP[0]["logprob"], "top_logprobs": TOP}]}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}


class JudgeServer:
    """An OpenAI-compatible stub: queued (status, headers, body) answers first, then completions."""

    def __init__(self) -> None:
        self.answers: deque[tuple[int, dict[str, str], Any]] = deque()
        self.arrivals: list[float] = []  # of /chat/completions requests
        self.connections = 0  # TCP connections accepted (one handler per connection with keep-alive)
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a reused connection serves many requests

            def setup(self) -> None:
                super().setup()
                with srv.lock:
                    srv.connections += 1

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else {}
                if self.path.endswith("/tokenize"):  # no tokenizer route: the label check is skipped
                    status, headers, payload = 404, {}, {"error": {"message": "not found"}}
                else:
                    with srv.lock:
                        srv.arrivals.append(time.monotonic())
                        answer = srv.answers.popleft() if srv.answers else None
                    status, headers, payload = answer if answer is not None else (200, {}, completion(body))
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = serve_in_thread(Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = JudgeServer()
    yield s
    s.stop()


def label_requests(n: int) -> list[LabelRequest]:
    return [LabelRequest([Message(role="user", content=f"Rate answer {i} from 1 to 5.")], ANSWER_OPEN,
                         ("1", "2", "3", "4", "5")) for i in range(n)]


def busy(status: int, retry_after: str | None = None) -> tuple[int, dict[str, str], Any]:
    return status, ({"Retry-After": retry_after} if retry_after else {}), {"error": {"message": f"status {status}"}}


def test_429_retry_after_is_honoured(server: JudgeServer):
    server.answers.append(busy(429, "1"))
    with OpenAIJudgeBackend("stub", base_url=server.url, max_retries=3, max_concurrency=1) as backend:
        [reply] = backend.label_probs(label_requests(1))
    assert reply.error is None and reply.probs is not None
    assert reply.probs["4"] == pytest.approx(0.6) and reply.probs["5"] == pytest.approx(0.4)
    first, second = server.arrivals
    # the backend's own backoff starts at 0.25-0.5 s: only the header explains a wait of a second
    assert second - first >= 1.0
    assert backend.calls == 2


def test_retry_after_past_the_budget_fails_the_item_at_once(server: JudgeServer):
    server.answers.append(busy(503, "30"))
    with OpenAIJudgeBackend("stub", base_url=server.url, max_retries=3, max_retry_time_s=5) as backend:
        t0 = time.monotonic()
        replies = backend.label_probs(label_requests(2))
        took = time.monotonic() - t0
    assert took < 5  # it did not sleep 30 s, nor up to the budget
    # the two requests race; whichever got the 503 failed alone, the other scored
    [bad] = [r for r in replies if r.error is not None]
    [good] = [r for r in replies if r.error is None]
    assert bad.error.kind == "backend_error" and "503" in str(bad.error) and good.probs["4"] == pytest.approx(0.6)
    assert len(server.arrivals) == 2


@pytest.mark.parametrize("status", [504, 500])
def test_504_and_500_are_not_retried(server: JudgeServer, status: int):
    server.answers.append(busy(status))
    with OpenAIJudgeBackend("stub", base_url=server.url, max_retries=5) as backend:
        [reply] = backend.generate([GenRequest([Message(role="user", content="hi")], max_tokens=4)])
    assert reply.error is not None and str(status) in str(reply.error) and reply.error.limit == status
    assert len(server.arrivals) == 1


def test_502_is_retried_with_backoff(server: JudgeServer):
    server.answers.extend([busy(502), busy(502)])
    with OpenAIJudgeBackend("stub", base_url=server.url, max_retries=2) as backend:
        [reply] = backend.generate([GenRequest([Message(role="user", content="hi")], max_tokens=4)])
    assert reply.error is None and reply.text == "4"
    assert len(server.arrivals) == 3


def test_one_connection_pool_for_the_backends_lifetime(server: JudgeServer):
    with OpenAIJudgeBackend("stub", base_url=server.url, max_concurrency=2) as backend:
        for _ in range(4):  # four calls of four concurrent requests each
            replies = backend.label_probs(label_requests(4))
            assert all(r.error is None for r in replies)
        # a judge on the same backend (it checks its labels on /tokenize first) uses the same pool
        [res] = Judge("helpfulness", backend, JudgeOptions(min_label_mass=0.0)).score([Sample(prompt="q", response="a")])
        assert res.ok and res.value == pytest.approx((4.4 - 1) / 4)
    assert len(server.arrivals) == 16 + 1
    # a new client per call would have opened at least one connection per call (5 and up)
    assert 1 <= server.connections <= 2, server.connections
    assert backend.peak_in_flight == 2


def test_close_ends_the_pool_and_the_loop_thread(server: JudgeServer):
    backend = OpenAIJudgeBackend("stub", base_url=server.url)
    assert backend.label_probs(label_requests(1))[0].error is None
    [thread] = [t for t in threading.enumerate() if t.name == "mmrm-openai-judge" and t.ident == backend._loop.thread.ident]
    backend.close()
    backend.close()  # idempotent
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        backend.label_probs(label_requests(1))


def test_settings_are_validated_by_the_config_model():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="top_logprobs"):
        OpenAIJudgeBackend("stub", base_url="http://127.0.0.1:1/v1", top_logprobs=21)
    b = OpenAIJudgeBackend("stub", base_url="http://127.0.0.1:1/v1", prefill="none", extra_body={"seed": 1})
    assert (b.config.model, b.config.prefill, b.config.extra_body, b.supports_prefill) == ("stub", "none", {"seed": 1}, False)
    b.close()


def test_docstring_examples_run():
    import doctest

    import mmrm.judges.backends.openai as module

    res = doctest.testmod(module)
    assert res.failed == 0 and res.attempted > 0


def test_a_serve_judge_entry_builds_the_backend_with_its_settings(server: JudgeServer):
    """serve's judge replica builds the backend from a config entry's settings (no Ray here: the
    replica class itself), and judges through it."""
    import asyncio

    from mmrm.serve.judge_deployment import JudgeServer as JudgeReplica

    entry = {"name": "stubby", "judge": {"min_label_mass": 0.0}, "rubrics": ["helpfulness"],
             "backend": {"type": "openai", "base_url": server.url, "model": "stub-judge", "timeout_s": 7.5,
                         "max_retries": 1, "max_retry_time_s": 9, "prefill": "none"}}
    replica = JudgeReplica(entry, {})
    backend = replica.backend
    try:
        assert isinstance(backend, OpenAIJudgeBackend)
        c = backend.config
        assert (c.model, c.base_url, c.timeout_s, c.max_retries, c.max_retry_time_s, c.prefill) == (
            "stub-judge", server.url, 7.5, 1, 9.0, "none")
        assert backend.retry_policy.max_retries == 1 and backend.retry_policy.max_retry_time == 9.0
        server.answers.append(busy(429, "1"))  # honoured inside the replica too
        out = asyncio.run(replica.judge({"items": [{"prompt": "q", "response": "a"}]}))
        [r] = out["results"]
        assert r["invalid"] is None and r["value"] == pytest.approx((4.4 - 1) / 4)
        # the 429 and its retry a second later
        assert len(server.arrivals) == 2 and server.arrivals[1] - server.arrivals[0] >= 1.0
    finally:
        backend.close()


def _reply(content: str, finish: str = "stop") -> tuple[int, dict[str, str], Any]:
    return 200, {}, {"id": "c", "object": "chat.completion", "model": "stub",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}


def test_a_hosted_api_without_prefill_parses_a_reasoning_preset_from_text(server: JudgeServer):
    """prefill: none and no logprobs: the whole reply is generated and parsed; no probability is claimed."""
    from mmrm.rm.types import Pair

    server.answers.extend([_reply("<think>Response 1 is correct.</think><answer>1</answer>")] * 2)
    with OpenAIJudgeBackend("stub", base_url=server.url, prefill="none", logprobs=False, json_schema=False) as backend:
        [r] = Judge("r1_reward", backend).compare([Pair(prompt="2+2?", response_a="4", response_b="5")])
    # Both orders answer "1" (the response shown first): a position-biased judge, debiased to 0.5.
    assert r.ok and r.value == 0.5 and r.prob_a_wins is None and r.details["probability"] is False
    assert r.details["path"] == "text" and len(server.arrivals) == 2
    server.answers.extend([_reply("<think>Response 1 is", finish="length"), _reply("<think>ok</think><answer>2</answer>")])
    with OpenAIJudgeBackend("stub", base_url=server.url, prefill="none", logprobs=False, json_schema=False,
                            max_concurrency=1) as backend:
        [cut] = Judge("r1_reward", backend).compare([Pair(prompt="2+2?", response_a="4", response_b="5")])
    assert cut.error_kind == "budget_exhausted" and "AB" in cut.invalid
