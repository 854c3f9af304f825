"""Overload: a burst far above capacity against the real service on Ray Serve.

The "rel" application admits 16 requests at once (mmrm's admission control), lets 40 requests/s
through per token with a burst of 60 (rate limit), and its two model replicas take 4 requests each
with 4 more queued in Serve (Serve's own back-pressure, behind ours). A burst of 200 concurrent
requests, each carrying four ~110 KB images (about 0.6 MB of JSON), must get: 429 (rate) or 503
(admission, or Serve's queue) at once with ``Retry-After`` and the error envelope for the excess;
full, correct results for every accepted request; bounded memory in every process of the service
(RSS measured with psutil, sampled every 50 ms) that does not grow with the size of the burst; and
a full recovery afterwards.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import service_pids
from helpers import png_data_uri

pytestmark = pytest.mark.slow

BURST = 200
MIB = 1024 * 1024


class RssSampler:
    """Samples the RSS of some processes every 50 ms in a thread; keeps the peak of each."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = {name: 0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> dict[str, int]:
        return {name: p.memory_info().rss for name, p in self.procs.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, rss in self.now().items():
                self.peak[name] = max(self.peak[name], rss)
            self._stop.wait(0.05)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _items() -> list[dict]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(4):
        uri = png_data_uri(rng.integers(0, 256, (196, 196, 3), dtype=np.uint8))  # noise: ~110 KB as PNG
        out.append({"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                            {"type": "text", "text": f"Question {i}?"}]}],
                    "response": f"Answer {i}."})
    return out


async def _burst(url: str, headers: dict, body: bytes, n: int) -> list[tuple[int, dict, str, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(headers={**headers, "content-type": "application/json"}, timeout=300,
                                 limits=limits) as c:
        async def one() -> tuple[int, dict, str, float]:
            t0 = time.monotonic()
            r = await c.post(url, content=body)
            return r.status_code, dict(r.headers), r.text, time.monotonic() - t0

        return await asyncio.gather(*(one() for _ in range(n)))


def _short(name: str) -> str:
    return "#".join(name.split("#")[1:]) if "#" in name else name.split("-")[0]


def _gauge(text: str, name: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                return s.value
    raise KeyError(name)


def test_burst_gets_fast_refusals_memory_stays_bounded_and_service_recovers(rel_service: dict) -> None:
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.types import Sample

    url = rel_service["url"] + "/v1/score"
    h = rel_service["headers"]
    items = _items()
    body = json.dumps({"model": "tiny2", "items": items}).encode()
    want = RewardModel.from_pretrained(rel_service["checkpoint"], device="cpu", media_policy=MediaPolicy()).rewards(
        [Sample.model_validate(s) for s in items])
    # Warm up every replica (lazy allocations happen on first use), then take the baseline.
    for _ in range(6):
        assert httpx.post(url, content=body, headers={**h, "content-type": "application/json"}, timeout=120).status_code == 200
    time.sleep(2)  # let the rate-limit bucket refill
    pids = service_pids("rel")
    assert sum(n.startswith("SERVE_REPLICA::rel#model-tiny2#") for n in pids) == 2, pids
    with RssSampler(pids) as rss:
        before = rss.now()
        t0 = time.monotonic()
        results = asyncio.run(_burst(url, h, body, BURST))
        burst_s = time.monotonic() - t0
    codes = [r[0] for r in results]
    print(f"burst of {BURST} x {len(body) / MIB:.2f} MiB in {burst_s:.1f} s:",
          {c: codes.count(c) for c in sorted(set(codes))})
    growth = {n: (rss.peak[n] - before[n]) / MIB for n in pids}
    print("RSS before (MiB):", {_short(n): round(before[n] / MIB) for n in pids})

    # Every answer is a full success or a typed, fast refusal with Retry-After: no 5xx but 503.
    assert set(codes) <= {200, 429, 503}, sorted(set(codes))
    # Some are served during the burst (admission now counts a request only once its body is read, so
    # fewer of a burst of large bodies find a free slot than before: 6-17 seen), the rest refused.
    assert codes.count(200) >= 4 and codes.count(429) + codes.count(503) >= BURST // 2, codes
    for status, headers, text, elapsed in results:
        if status == 200:
            values = [d["value"] for d in json.loads(text)["data"]]
            assert np.max(np.abs(np.array(values) - np.array(want))) < 1e-5
            continue
        err = json.loads(text)["error"]
        assert int(headers["retry-after"]) >= 1, headers
        assert err["kind"] in ({"rate_limited"} if status == 429 else {"overloaded", "replica_unavailable"}), err
        # Refused without queueing behind the work (which would take the burst's whole duration and
        # more): max 6.2 s seen in CI, 9.0 s on a machine also busy with other jobs.
        assert elapsed < 15, (status, elapsed)
    # No median bound: a refusal now waits for its body first (admission follows the body), and on a
    # loaded 2-core machine Serve's proxy took up to ~7 s to pass 200 x 0.6 MB bodies (median refusal
    # 4.7 s in a full-suite run, 0.5-2 s alone); each refusal is still bounded above (< 15 s).
    refused = [e for s, _, _, e in results if s != 200]
    print(f"refusal latency (s): median {np.median(refused):.2f}, max {max(refused):.2f}")

    # Recovery: in-flight drains to zero; sequential requests are all served, at normal latency.
    time.sleep(2)
    metrics = httpx.get(rel_service["url"] + "/metrics", headers=h, timeout=30)
    assert metrics.status_code == 200 and _gauge(metrics.text, "mmrm_inflight_requests") == 0
    lat = []
    for _ in range(5):
        t = time.monotonic()
        r = httpx.post(url, content=body, headers={**h, "content-type": "application/json"}, timeout=120)
        lat.append(time.monotonic() - t)
        assert r.status_code == 200
        assert np.max(np.abs(np.array([d["value"] for d in r.json()["data"]]) - np.array(want))) < 1e-5
    assert httpx.get(rel_service["url"] + "/readyz", headers=h, timeout=30).status_code == 200
    print("latency after the burst (s):", [round(x, 2) for x in lat])
    # Memory is bounded by admission, not by the offered load. mmrm's processes (the ingress, the
    # model and judge replicas) may hold at most what admission lets in: 16 requests x 0.6 MB at the
    # ingress (x ~10 once parsed, validated and re-serialized: ~100 MB), 2 x (4 + 4) requests at the
    # replicas. So a burst TWICE as large must not raise their peak RSS by more than a small margin
    # over the first burst's peak: growth that tracked the burst (refused bodies read, an unbounded
    # queue) would add ~120 MB (200 more requests x 0.6 MB). The allocator keeps what it once used,
    # so the first burst's own growth (larger batches, buffers) stays. That absolute high-water mark
    # depends on the allocator and the machine's load (100-276 MB seen; 276 in a loaded CI run), so it
    # is only a guard against growth that follows the burst: reading and parsing every body of the
    # first burst would take ~200 x 0.6 MB x ~10 = ~1.2 GB; the guard is 400 MB (the ~100 MB parsed,
    # the bodies being read at once before admission, admission.max_body_reads = 4 x 16 = 64 x 0.6 MB
    # ~40 MB, and the allocator's slack). The bound that shows memory does not follow the offered load
    # is the 2x-burst one below. The 2x burst may fill more of those reading places at once than
    # the first did, so its margin over the first burst's peak is 64 MB plus those bodies (~102 MB),
    # still below what growth that tracked the offered load would add (>= 120 MB).
    # Serve's HTTP proxy (Ray's code, shared by every app) reads every open connection's body into
    # memory before the app sees it: its growth follows connections x body size. It is printed, not
    # asserted (RELIABILITY.md: put a reverse proxy with connection and body-size limits in front).
    with RssSampler(pids) as rss2:
        results2 = asyncio.run(_burst(url, h, body, 2 * BURST))
    codes2 = [r[0] for r in results2]
    assert set(codes2) <= {200, 429, 503}, sorted(set(codes2))
    print(f"burst of {2 * BURST}:", {c: codes2.count(c) for c in sorted(set(codes2))})
    extra = {n: (rss2.peak[n] - rss.peak[n]) / MIB for n in pids}
    reading_mib = 4 * 16 * len(body) / MIB  # admission.max_body_reads (default 4 x max_inflight 16) bodies
    print("peak RSS growth, 1st burst over baseline (MiB):", {_short(n): round(g, 1) for n, g in growth.items()})
    print("peak RSS growth, 2x burst over 1st burst's peak (MiB):", {_short(n): round(g, 1) for n, g in extra.items()})
    for name in pids:
        if name.startswith("SERVE_PROXY_ACTOR"):
            continue
        assert growth[name] < 400, (name, growth[name])
        assert extra[name] < 64 + reading_mib, (name, extra[name])
