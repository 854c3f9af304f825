"""Faults: a replica killed mid-batch, and a judge server that times out or talks nonsense.

Real Ray Serve, real processes, real HTTP: the replica is killed with SIGKILL (no chance to clean
up), and the judge's backend is a real server on 127.0.0.1 that misbehaves (conftest.StubServer).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import wait_for_replicas
from helpers import WaitTimeout, png_data_uri, wait_until

pytestmark = pytest.mark.slow


class ErrorRecorder:
    """Sends requests over a real httpx transport and remembers every error answer (status,
    Retry-After, body); wrapped in ``httpx.MockTransport`` to sit under the mmrm client."""

    def __init__(self) -> None:
        import httpx

        self.inner = httpx.HTTPTransport()
        self.errors: list[tuple[int, str | None, str]] = []
        self.lock = threading.Lock()

    def handle_request(self, request):
        response = self.inner.handle_request(request)
        if response.status_code >= 400:
            response.read()
            with self.lock:
                self.errors.append((response.status_code, response.headers.get("retry-after"), response.text[:300]))
        return response


def _samples(k: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        uri = png_data_uri(rng.integers(0, 255, (56, 56 + 14 * (i % 3), 3), dtype=np.uint8))
        prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                               {"type": "text", "text": "Describe it. " + "detail " * (40 * (i % 4))}]}]
        out.append({"prompt": prompt, "response": f"Answer {seed}-{i}."})
    return out


@pytest.fixture(scope="module")
def inproc(rel_service: dict):
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(rel_service["checkpoint"], device="cpu",
                                       media_policy=MediaPolicy(allowed_roots=[rel_service["media_root"]]))


def test_replica_killed_mid_batch_every_request_completes_with_right_scores(rel_service: dict, inproc) -> None:
    from mmrm.client import Client
    from mmrm.rm.types import Sample

    reps = wait_for_replicas("rel", "model-tiny2", 2)
    assert len(reps) == 2, reps
    victim = sorted(reps.values())[0]
    jobs = [_samples(4, seed) for seed in range(24)]
    want = {seed: inproc.rewards([Sample.model_validate(s) for s in items]) for seed, items in enumerate(jobs)}
    done: list[int] = []
    lock = threading.Lock()

    recorder = ErrorRecorder()

    def run(seed: int) -> list[float]:
        import httpx

        with Client(base_url=rel_service["url"], token=rel_service["token"], max_retries=20, max_retry_time=180,
                    timeout=120, transport=httpx.MockTransport(recorder.handle_request)) as client:
            res = client.score(jobs[seed], model="tiny2")
        with lock:
            done.append(seed)
        return [r.value for r in res]

    import psutil

    proc = psutil.Process(victim)
    with ThreadPoolExecutor(6) as pool:
        futures = {seed: pool.submit(run, seed) for seed in range(len(jobs))}
        # Kill when traffic is steady and the victim is busy computing (a batch is in flight); best
        # effort: after 60 s it is killed anyway.
        def busy() -> bool:
            t0 = sum(proc.cpu_times()[:2])
            time.sleep(0.05)
            return sum(proc.cpu_times()[:2]) - t0 > 0.01  # >= 20% of a core: a forward is running

        deadline = time.monotonic() + 60
        busy_at = None
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: len(done) >= 2, timeout=60, interval=0.05)
            wait_until(busy, timeout=max(0.0, deadline - time.monotonic()), interval=0)
            busy_at = len(done)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        got = {seed: f.result(timeout=300) for seed, f in futures.items()}
    # The kill hit work in flight (those requests failed over to a retry), and every refusal the
    # client saw was a typed 503/429 with Retry-After: never a 500, never Serve's bare text.
    kinds = []
    for status, retry_after, body in recorder.errors:
        assert status in (429, 503) and retry_after is not None and int(retry_after) >= 1, (status, retry_after, body)
        kinds.append(json.loads(body)["error"]["kind"])
    assert "replica_unavailable" in kinds, (busy_at, recorder.errors)
    for seed, values in got.items():
        assert np.max(np.abs(np.array(values) - np.array(want[seed]))) < 1e-5, seed
    # Serve restarts the killed replica; the deployment is back at full strength and serving.
    reps = wait_for_replicas("rel", "model-tiny2", 2, exclude=frozenset({victim}))
    print("replica restarted in", time.monotonic() - killed_at)
    assert victim not in reps.values()


def test_judge_backend_timeouts_and_garbage_are_per_item_failures(rel_service: dict) -> None:
    """The judge's OpenAI-compatible server sleeps past the timeout, sends non-JSON, a 500, JSON of the
    wrong shape, or no logprobs, one item each: the batch answers 200 and every bad item carries its
    own explicit failure, while the good items keep their scores."""
    import httpx

    markers = ["fine", "[[sleep]]", "fine too", "[[garbage]]", "[[500]]", "[[shape]]", "[[nologprobs]]"]
    items = [{"prompt": "Rate this answer.", "response": f"The answer. {m}"} for m in markers]
    t0 = time.monotonic()
    r = httpx.post(rel_service["url"] + "/v1/judge", json={"judge": "flaky", "items": items},
                   headers=rel_service["headers"], timeout=120)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(len(items)))
    for d, marker in zip(data, markers):
        if marker.startswith("fine"):
            # P("4") = 0.6, P("5") = 0.4 on a 1..5 scale: expected 4.4, normalized (4.4 - 1) / 4.
            assert d["invalid"] is None and d["value"] == pytest.approx(0.85, abs=1e-6), d
        else:
            assert d["value"] is None and d["invalid"] and d["error_kind"], (marker, d)
    assert r.json()["usage"] == {"items": 7, "invalid": 5}
    by_marker = {m: d for m, d in zip(markers, data)}
    assert "timed out" in by_marker["[[sleep]]"]["invalid"].lower() or "timeout" in by_marker["[[sleep]]"]["invalid"].lower()
    assert "500" in by_marker["[[500]]"]["invalid"]
    assert "malformed" in by_marker["[[garbage]]"]["invalid"] and "malformed" in by_marker["[[shape]]"]["invalid"]
    assert "logprobs" in by_marker["[[nologprobs]]"]["invalid"]
    # The slow item cost one timeout (5 s, no retries configured; the stub sleeps 30 s), not the whole deadline.
    assert elapsed < 30, elapsed
    # and the judge keeps serving
    r = httpx.post(rel_service["url"] + "/v1/judge", json={"judge": "flaky", "items": items[:1]},
                   headers=rel_service["headers"], timeout=60)
    assert r.status_code == 200 and r.json()["data"][0]["value"] == pytest.approx(0.85, abs=1e-6)
