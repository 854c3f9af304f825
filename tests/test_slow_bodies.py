"""The request path under hostile clients, against a live service on real Ray Serve and real HTTP.

An application of its own ("guard" at /guard, on the session's Ray and Serve) admits 4 requests at
once, lets 64 bodies arrive at once, and gives a body 6 s to arrive. Raw sockets play the hostile clients:

* slow bodies: N > max_inflight authenticated uploads that trickle their body a few bytes per
  second. Normal clients must still be served (200) within their usual latency, measured first in
  the same test; every trickler gets 408 (the error envelope naming ``body`` and the limit) once
  the body deadline passes, and its connection is closed;
* oversized headers: a 1 MB ``Authorization`` header is a 431 before any token is compared
  (Serve's proxy, uvicorn on httptools, lets it through: the answer is mmrm's envelope);
* cost: requests over the samples, text or pixel limits are 422 naming the field and the limit,
  answered before any replica works, and a request at the limit is served.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import time

import httpx
import pytest
from PIL import Image

from helpers import wait_until

pytestmark = pytest.mark.slow

PREFIX = "/guard"
MAX_INFLIGHT = 4
BODY_TIMEOUT_S = 6.0
TRICKLERS = 24  # 6x max_inflight
LIMITS = {"max_samples": 16, "max_text_chars": 20_000, "max_request_pixels": 3_000_000, "max_items": 64,
          "max_group_size": 64}


@pytest.fixture(scope="module")
def guard(service: dict) -> dict:
    """The "guard" application: one reward model and one hf judge, small admission and cost limits."""
    from conftest import SERVICE_TOKEN_ENV
    from ray import serve

    from mmrm.serve.app import build_app

    args = {
        "models": [{"name": "tiny", "checkpoint": str(service["checkpoint"]), "num_cpus": 0.5, "max_batch_size": 16,
                    "batch_wait_timeout_s": 0.01}],
        "judges": [{"name": "judge", "backend": {"type": "hf", "model": str(service["judge_model"])},
                    "judge": {"min_label_mass": 0.0}, "num_cpus": 0.25}],
        "limits": {**LIMITS, "body_timeout_s": BODY_TIMEOUT_S, "request_timeout_s": 60},
        # Room for every trickler while it arrives (the default is 4 x max_inflight): what is proved is that
        # no trickler takes one of the max_inflight slots.
        "admission": {"max_inflight": MAX_INFLIGHT, "max_body_reads": 64, "retry_after_s": 1},
        "auth": {"token_env": SERVICE_TOKEN_ENV},
        "ingress_num_cpus": 0.25,
    }
    serve.run(build_app(args), name="guard", route_prefix=PREFIX, blocking=False)
    url = service["url"] + PREFIX
    # routed by the proxy, and every replica loaded and warm
    wait_until(lambda: httpx.get(url + "/readyz", headers=service["headers"], timeout=10).status_code == 200,
               timeout=180, interval=0.5, ignore=(httpx.HTTPError,), message="the guard app did not become ready")
    host, port = service["url"].removeprefix("http://").split(":")
    return {**service, "url": url, "host": host, "port": int(port)}


def _score_body(n: int = 1) -> dict:
    return {"model": "tiny", "items": [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(n)]}


def _timed_post(client: httpx.Client, url: str, body: dict) -> tuple[int, float]:
    t = time.monotonic()
    r = client.post(url, json=body)
    return r.status_code, time.monotonic() - t


def _parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once ``raw`` holds a whole HTTP/1.1 answer, else None."""
    head, sep, payload = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":  # one chunk: "<hex>\r\n<data>\r\n0\r\n\r\n"
        size, sep, rest = payload.partition(b"\r\n")
        if not sep or not payload.endswith(b"0\r\n\r\n"):
            return None
        payload = rest[:int(size, 16)]
    elif len(payload) < int(headers.get("content-length", "0")):
        return None
    return int(lines[0].split()[1]), headers, payload


async def _trickle(host: str, port: int, path: str, token: str, length: int) -> dict:
    """An authenticated POST that declares ``length`` body bytes and sends 2 per second until the
    server answers; returns the status, the answer's headers and body, when it came, and whether
    the server then closed the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    t0 = time.monotonic()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    writer.write(head.encode())
    await writer.drain()
    body = b'{"model": "tiny", "items": [' + b" " * length
    answered = asyncio.Event()

    async def send() -> None:
        for k in range(0, length, 2):
            if answered.is_set():
                return
            try:
                writer.write(body[k:k + 2])
                await writer.drain()
            except (ConnectionError, OSError):
                return  # the server closed the connection (after its answer)
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(send())
    raw, answer, took, closed = b"", None, None, False
    end = time.monotonic() + BODY_TIMEOUT_S + 60
    try:
        while time.monotonic() < end:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=end - time.monotonic())
            except ConnectionResetError:
                # The server closed with our trickled bytes unread in its buffer (the kernel then
                # resets the connection): closed, once the answer was read before.
                closed = True
                break
            if not chunk:  # EOF: the server closed the connection
                closed = True
                break
            raw += chunk
            if answer is None and (answer := _parse_answer(raw)) is not None:
                took = time.monotonic() - t0
                answered.set()
    finally:
        sender.cancel()
        writer.close()
    assert answer is not None, raw[:300]
    status, headers, payload = answer
    return {"status": status, "headers": headers, "body": payload, "took": took, "closed": closed}


def test_trickling_uploads_do_not_starve_normal_clients_and_get_408(guard: dict) -> None:
    url = guard["url"] + "/v1/score"
    with httpx.Client(headers=guard["headers"], timeout=60) as c:
        for _ in range(3):  # warm
            assert c.post(url, json=_score_body()).status_code == 200
        base = [_timed_post(c, url, _score_body()) for _ in range(10)]
    assert all(s == 200 for s, _ in base), base
    base_median = statistics.median(t for _, t in base)

    async def run() -> tuple[list[dict], list[tuple[int, float]]]:
        tricklers = [asyncio.create_task(_trickle(guard["host"], guard["port"], PREFIX + "/v1/score",
                                                  guard["token"], 4000)) for _ in range(TRICKLERS)]
        await asyncio.sleep(1.0)  # every trickler is connected and has sent its headers and a first byte
        normal: list[tuple[int, float]] = []
        async with httpx.AsyncClient(headers=guard["headers"], timeout=60) as ac:
            end = time.monotonic() + BODY_TIMEOUT_S - 2.0  # while every trickler still holds its connection
            while time.monotonic() < end:
                # Sequential requests, and bursts of max_inflight at once: all must get a slot.
                t = time.monotonic()
                r = await ac.post(url, json=_score_body())
                normal.append((r.status_code, time.monotonic() - t))
                burst = await asyncio.gather(*(ac.post(url, json=_score_body()) for _ in range(MAX_INFLIGHT)))
                normal += [(b.status_code, 0.0) for b in burst]
        return await asyncio.gather(*tricklers), normal

    t0 = time.monotonic()
    slow, normal = asyncio.run(run())
    during = [t for s, t in normal if t > 0]
    print(f"\nnormal clients: baseline median {base_median * 1000:.0f} ms; with {TRICKLERS} trickling uploads "
          f"(max_inflight {MAX_INFLIGHT}): {len(normal)} requests, statuses "
          f"{sorted({s for s, _ in normal})}, sequential median {statistics.median(during) * 1000:.0f} ms, "
          f"max {max(during) * 1000:.0f} ms")
    print(f"tricklers: statuses {sorted({r['status'] for r in slow})}, answered after "
          f"{min(r['took'] for r in slow):.1f}..{max(r['took'] for r in slow):.1f} s (body_timeout_s {BODY_TIMEOUT_S})")
    assert all(s == 200 for s, _ in normal), [s for s, _ in normal]
    assert len(during) >= 3
    # Served within their usual latency: a generous factor (the machine is shared), never a wait for a slot.
    assert statistics.median(during) < 3 * base_median + 0.3, (statistics.median(during), base_median)
    for r in slow:
        assert r["status"] == 408, r
        err = json.loads(r["body"])["error"]
        assert err["kind"] == "timeout" and err["field"] == "body" and err["limit"] == BODY_TIMEOUT_S, err
        assert r["headers"].get("connection") == "close" and r["closed"], r["headers"]
        assert BODY_TIMEOUT_S - 0.5 <= r["took"] < BODY_TIMEOUT_S + 15, r["took"]
    assert time.monotonic() - t0 < BODY_TIMEOUT_S + 30
    # Every slot came back: the service serves a burst of max_inflight at once.
    with httpx.Client(headers=guard["headers"], timeout=60) as c:
        assert c.post(url, json=_score_body(4)).status_code == 200


def test_megabyte_authorization_header_is_431_before_comparing(guard: dict) -> None:
    url = guard["url"] + "/v1/score"
    huge = "Bearer " + "x" * (1024 * 1024)
    r = httpx.post(url, json=_score_body(), headers={"Authorization": huge}, timeout=60)
    # The answer is mmrm's envelope: Serve's proxy (uvicorn with httptools) did not cap the header.
    assert r.status_code == 431, r.text[:300]
    err = r.json()["error"]
    assert err["kind"] == "payload_too_large" and err["field"] == "headers" and err["limit"] == 16 * 1024, err
    # Under the header cap, a credential of the wrong length is a plain 401 (refused without comparing).
    r = httpx.post(url, json=_score_body(), headers={"Authorization": "Bearer " + "x" * 8000}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization", r.text[:300]
    # Many headers that add up count too; the right token still works.
    many = {**guard["headers"], **{f"x-pad-{i}": "y" * 1000 for i in range(20)}}
    assert httpx.post(url, json=_score_body(), headers=many, timeout=60).status_code == 431
    assert httpx.post(url, json=_score_body(), headers=guard["headers"], timeout=60).status_code == 200


def _gif_uri(side: int) -> str:
    im = Image.new("P", (side, side), 0)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, "GIF")
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_prompt(uri: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": "What is it?"}]}]


@pytest.mark.parametrize("case", ["rank_samples", "compare_samples", "judge_pairs_both_orders", "text", "pixels",
                                  "pixels_bare_base64", "classify_samples"])
def test_requests_over_the_cost_limits_are_422_naming_field_and_limit(guard: dict, case: str) -> None:
    over: tuple[str, dict, str, int]
    at: tuple[str, dict]
    if case == "rank_samples":  # 3 groups x 6 = 18 samples > 16 (each group within max_group_size)
        group = lambda n: {"prompt": "Q?", "responses": [f"answer {j}" for j in range(n)]}  # noqa: E731
        over = ("/v1/rank", {"model": "tiny", "groups": [group(6)] * 3}, "groups", LIMITS["max_samples"])
        at = ("/v1/rank", {"model": "tiny", "groups": [group(8)] * 2})
    elif case == "compare_samples":  # 9 pairs x 2 = 18 > 16
        pair = {"prompt": "Q?", "response_a": "a", "response_b": "b"}
        over = ("/v1/compare", {"model": "tiny", "pairs": [pair] * 9}, "pairs", LIMITS["max_samples"])
        at = ("/v1/compare", {"model": "tiny", "pairs": [pair] * 8})
    elif case == "judge_pairs_both_orders":  # 5 pairs x 2 responses x 2 orders = 20 > 16
        pair = {"prompt": "Q?", "response_a": "a", "response_b": "b"}
        over = ("/v1/judge", {"judge": "judge", "pairs": [pair] * 5}, "pairs", LIMITS["max_samples"])
        at = ("/v1/judge", {"judge": "judge", "pairs": [pair] * 4})
    elif case == "text":  # a 3,000-character prompt encoded with each of 8 responses: 24,000 > 20,000
        long = {"prompt": "word " * 600, "responses": [f"answer {j}" for j in range(8)]}
        over = ("/v1/rank", {"model": "tiny", "groups": [long]}, "groups", LIMITS["max_text_chars"])
        at = ("/v1/rank", {"model": "tiny", "groups": [{**long, "responses": long["responses"][:6]}]})
    elif case == "pixels":  # a 1000x1000 image (a few KB) in each of 4 samples: 4 M pixels > 3 M
        uri = _gif_uri(1000)
        item = {"prompt": _image_prompt(uri), "response": "a square"}
        over = ("/v1/score", {"model": "tiny", "items": [item] * 4}, "items", LIMITS["max_request_pixels"])
        at = ("/v1/score", {"model": "tiny", "items": [item] * 3})
    elif case == "pixels_bare_base64":
        uri = _gif_uri(1000).partition(",")[2]
        item = {"prompt": _image_prompt(uri), "response": "a square"}
        over = ("/v1/score", {"model": "tiny", "items": [item] * 4}, "items", LIMITS["max_request_pixels"])
        at = ("/v1/score", {"model": "tiny", "items": [item] * 3})
    else:  # vLLM's /classify shape (ChatML-rendered conversations, as verl sends): 17 inputs > 16
        chat = [f"<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\nAnswer {i}.<|im_end|>"
                for i in range(17)]
        over = ("/classify", {"model": "tiny", "input": chat}, "input", LIMITS["max_samples"])
        at = ("/classify", {"model": "tiny", "input": chat[:16]})
    path, body, field, limit = over
    t = time.monotonic()
    r = httpx.post(guard["url"] + path, json=body, headers=guard["headers"], timeout=60)
    took = time.monotonic() - t
    assert r.status_code == 422, r.text[:500]
    err = r.json()["error"]
    assert err["kind"] == "limit_exceeded" and err["field"] == field and err["limit"] == limit, err
    assert took < 5, took  # refused before any replica works, not after
    r = httpx.post(guard["url"] + at[0], json=at[1], headers=guard["headers"], timeout=120)
    assert r.status_code == 200, r.text[:500]
