"""Abandoned work stops: after a 504 (the request deadline) or a client that disconnects, the model
replica must not keep computing for nobody.

An application of its own ("abandon" at /abandon, on the session's Ray and Serve) has a 6 s request
deadline. Each request is made of many expensive items: 2500x2500 GIFs of a few KB each, whose
decoding (and resizing for the vision tower) costs about 0.2 CPU-seconds per item. The replica
process's CPU time (psutil: user + system, every thread) is measured

* for the full work: the same number of such items, scored in small requests that finish;
* in the 10 s after a 504 on one request of all of them;
* in the 10 s after a client that sent one such request disconnects (before the deadline).

Both must be a small fraction of the full cost: queued items dropped, no new item decoded, no new
sub-batch started. Each phase uses its own images, so no cache carries work from one to the next.
"""

from __future__ import annotations

import base64
import io
import time

import httpx
import psutil
import pytest
from PIL import Image, ImageDraw

from conftest import replica_pids
from helpers import wait_until

pytestmark = pytest.mark.slow

PREFIX = "/abandon"
DEADLINE_S = 6.0
N_ITEMS = 48
SIDE = 2500
WINDOW_S = 10.0


@pytest.fixture(scope="module")
def abandon_app(service: dict) -> dict:
    from conftest import SERVICE_TOKEN_ENV
    from ray import serve

    from mmrm.serve.app import build_app

    args = {
        "models": [{"name": "tiny", "checkpoint": str(service["checkpoint"]), "num_cpus": 1, "max_batch_size": 8,
                    "batch_wait_timeout_s": 0.01}],
        "limits": {"request_timeout_s": DEADLINE_S, "max_items": 64, "max_request_pixels": 10_000_000_000},
        "auth": {"token_env": SERVICE_TOKEN_ENV},
        "ingress_num_cpus": 0.25,
    }
    serve.run(build_app(args), name="abandon", route_prefix=PREFIX, blocking=False)
    url = service["url"] + PREFIX
    wait_until(lambda: httpx.get(url + "/readyz", headers=service["headers"], timeout=10).status_code == 200,
               timeout=180, interval=0.5, ignore=(httpx.HTTPError,), message="the abandon app did not become ready")
    (pid,) = replica_pids("abandon", "model-tiny").values()
    return {**service, "url": url, "pid": pid}


def _gif_item(seed: int) -> dict:
    """A 2500x2500 two-colour GIF (a few KB) with a rectangle that differs per seed."""
    im = Image.new("P", (SIDE, SIDE), 0)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    off = 7 * seed % 900
    ImageDraw.Draw(im).rectangle([100 + off, 200, 1400 + off, 2100 - off // 2], fill=1)
    buf = io.BytesIO()
    im.save(buf, "GIF")
    uri = "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                    {"type": "text", "text": f"Where is the square ({seed})?"}]}],
            "response": "In the middle."}


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _cpu_over(proc: psutil.Process, seconds: float) -> float:
    c0 = _cpu(proc)
    time.sleep(seconds)
    return _cpu(proc) - c0


def test_work_stops_after_a_504_and_after_a_disconnect(abandon_app: dict) -> None:
    proc = psutil.Process(abandon_app["pid"])
    url = abandon_app["url"] + "/v1/score"
    h = abandon_app["headers"]
    idle = _cpu_over(proc, 3.0) / 3.0  # health checks, metrics: CPU-seconds per second at rest

    # The full cost of N_ITEMS such items, in requests small enough to finish within the deadline.
    full_items = [_gif_item(1000 + i) for i in range(N_ITEMS)]
    c0, t0 = _cpu(proc), time.monotonic()
    for k in range(0, N_ITEMS, 4):
        r = httpx.post(url, json={"model": "tiny", "items": full_items[k:k + 4]}, headers=h, timeout=120)
        assert r.status_code == 200, r.text[:300]
        assert all(d["value"] is not None for d in r.json()["data"]), r.text[:300]
    full_wall = time.monotonic() - t0
    full = _cpu(proc) - c0 - idle * full_wall
    assert full > 3.0, full  # the items are expensive enough for the comparison to mean something

    # One request of all of them: the ingress answers 504 at the deadline.
    big = {"model": "tiny", "items": [_gif_item(2000 + i) for i in range(N_ITEMS)]}
    c0, t0 = _cpu(proc), time.monotonic()
    r = httpx.post(url, json=big, headers=h, timeout=120)
    took = time.monotonic() - t0
    assert r.status_code == 504, r.text[:300]
    assert r.json()["error"]["kind"] == "timeout" and r.json()["error"]["limit"] == DEADLINE_S
    before_504 = _cpu(proc) - c0
    after_504 = _cpu_over(proc, WINDOW_S) - idle * WINDOW_S

    # One more, whose client disconnects after 1 s (long before the deadline).
    big = {"model": "tiny", "items": [_gif_item(3000 + i) for i in range(N_ITEMS)]}
    c0 = _cpu(proc)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=big, headers=h, timeout=httpx.Timeout(60, read=1.0))
    before_disc = _cpu(proc) - c0
    after_disc = _cpu_over(proc, WINDOW_S) - idle * WINDOW_S

    print(f"\nfull cost of {N_ITEMS} items of {SIDE}x{SIDE}: {full:.2f} CPU-s ({full_wall:.1f} s wall); idle "
          f"{idle:.3f} CPU-s/s; 504 after {took:.1f} s ({before_504:.2f} CPU-s before it), then "
          f"{after_504:.2f} CPU-s in {WINDOW_S:.0f} s; disconnect after 1 s ({before_disc:.2f} CPU-s), then "
          f"{after_disc:.2f} CPU-s in {WINDOW_S:.0f} s")
    # Without stopping, the work left after the 504 (about half of it at this deadline) would run,
    # and after the disconnect everything until the deadline (five seconds of one core). Only the
    # item being decoded and a forward already running may finish.
    assert after_504 < 0.15 * full, (after_504, full)
    assert after_disc < 0.15 * full, (after_disc, full)
    # And the replica still serves.
    r = httpx.post(url, json={"model": "tiny", "items": full_items[:2]}, headers=h, timeout=120)
    assert r.status_code == 200, r.text[:300]


def test_judge_stops_between_backend_batches(tiny_qwen2_vl) -> None:
    """The judge replica's per-request backend (StopAware) runs no further backend batch once its
    request is abandoned: with a real hf judge backend (2 queries per forward), a request abandoned
    during its first forward runs that forward only; its other queries are timeouts, read by nobody."""
    import threading

    from mmrm.judges.backends.hf import HFJudgeBackend
    from mmrm.judges.judge import Judge, JudgeOptions
    from mmrm.rm.types import Pair, Sample
    from mmrm.serve.judge_deployment import StopAware

    backend = HFJudgeBackend(tiny_qwen2_vl, max_batch_size=2)
    forwards: list[int] = []
    stop = threading.Event()

    def hook(*_: object) -> None:
        forwards.append(1)
        stop.set()  # abandoned while its first forward runs

    handle = backend.model.register_forward_hook(hook)
    try:
        opts = JudgeOptions(min_label_mass=0.0)
        res = Judge("helpfulness", StopAware(backend, stop.is_set, chunk=2), opts).score(
            [Sample(prompt="q", response=f"answer {i}") for i in range(6)])
        assert len(forwards) == 1, forwards
        assert [r.ok for r in res] == [True, True, False, False, False, False], res
        assert {r.error_kind for r in res[2:]} == {"timeout"}
        # Pairs (both orders: 4 queries for 2 pairs): the same, and nothing stops a request that is not abandoned.
        forwards.clear()
        stop.clear()
        never = StopAware(backend, lambda: False, chunk=2)
        pairs = [Pair(prompt="q", response_a=f"a{i}", response_b="b") for i in range(2)]
        full = Judge("helpfulness", never, opts).compare(pairs)
        assert all(r.ok for r in full) and len(forwards) == 2
        plain = Judge("helpfulness", backend, opts).compare(pairs)  # the unwrapped backend, for the values
        assert [r.value for r in full] == pytest.approx([r.value for r in plain], abs=1e-5)
    finally:
        handle.remove()
