"""Determinism: the same request gets the same score (fp32 on the CPU: within 1e-5 absolute) whatever
else shares its batch, whichever replica serves it, and after the service is restarted.

Reward models, and judges on the logprob path. The expected values come from an in-process model
loaded in this test process, which is itself another process and another load of the checkpoint.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import numpy as np
import pytest

from helpers import png_data_uri, wait_until

pytestmark = pytest.mark.slow

TOL = 1e-5


def _img(seed: int, h: int = 56, w: int = 56) -> str:
    return png_data_uri(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _sample(seed: int, words: int = 0, image: tuple[int, int] | None = (56, 56)) -> dict:
    content = ([{"type": "image_url", "image_url": {"url": _img(seed, *image)}}] if image else []) + \
        [{"type": "text", "text": f"Question {seed}. " + "context " * words}]
    return {"prompt": [{"role": "user", "content": content}], "response": f"Answer {seed}."}


PROBES = [_sample(1), _sample(2, words=30, image=(84, 56)), _sample(3, image=None)]
# Companions of very different lengths and image sizes: they change padding, batch width and order.
OTHERS = [_sample(10 + i, words=(0, 200, 5, 60, 400, 1)[i % 6], image=(None, (56, 56), (112, 84), (28, 280))[i % 4])
          for i in range(12)]


@pytest.fixture(scope="module")
def inproc(service: dict):
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_pretrained(service["checkpoint"], device="cpu", media_policy=MediaPolicy())


@pytest.fixture(scope="module")
def expected(inproc) -> list[float]:
    from mmrm.rm.types import Sample

    return inproc.rewards([Sample.model_validate(s) for s in PROBES])


def _score(app: dict, model: str, items: list[dict]) -> list[float]:
    r = httpx.post(app["url"] + "/v1/score", json={"model": model, "items": items}, headers=app["headers"], timeout=120)
    assert r.status_code == 200, r.text[:500]
    return [d["value"] for d in r.json()["data"]]


def _close(got: list[float], want: list[float]) -> None:
    assert np.max(np.abs(np.array(got) - np.array(want))) < TOL, (got, want)


def test_same_score_across_batch_compositions(service: dict, expected: list[float]) -> None:
    # alone, each in front of / behind / among companions, and in one request with everything
    for k, probe in enumerate(PROBES):
        _close(_score(service, "tiny", [probe]), [expected[k]])
        for n in (1, 3, 7, 12):
            items = OTHERS[:n] + [probe] + OTHERS[n:n + 2]
            _close([_score(service, "tiny", items)[n]], [expected[k]])
    _close(_score(service, "tiny", [*PROBES, *OTHERS])[:3], expected)
    _close(_score(service, "tiny", [*OTHERS, *reversed(PROBES)])[-3:], list(reversed(expected)))

    # concurrent requests: Serve's dynamic batcher merges items of different requests into one batch
    async def burst() -> list[list[float]]:
        async with httpx.AsyncClient(headers=service["headers"], timeout=120) as c:
            bodies = [{"model": "tiny", "items": [OTHERS[i % 12], *PROBES, OTHERS[(i * 5) % 12]]} for i in range(5)]
            rs = await asyncio.gather(*(c.post(service["url"] + "/v1/score", json=b) for b in bodies))
            return [[d["value"] for d in r.json()["data"]][1:4] for r in rs]

    for got in asyncio.run(burst()):
        _close(got, expected)


def test_same_score_across_replicas(rel_service: dict, expected: list[float]) -> None:
    """Each live replica of the 2-replica deployment scores the probes itself, in its own process
    (a function run inside the replica actor finds the deployment's RewardModelServer); then the HTTP
    path, many times, which Serve spreads over both."""
    import ray

    from conftest import wait_for_replicas

    def score_inside(actor: object) -> tuple[int, list[float]]:
        from mmrm.rm.types import Sample
        from mmrm.serve.reward_deployment import RewardModelServer

        seen: set[int] = set()

        def find(obj: object, depth: int) -> RewardModelServer | None:
            if isinstance(obj, RewardModelServer):
                return obj
            if depth == 0 or id(obj) in seen or not hasattr(obj, "__dict__"):
                return None
            seen.add(id(obj))
            for v in vars(obj).values():
                hit = find(v, depth - 1)
                if hit is not None:
                    return hit
            return None

        server = find(actor, 5)
        assert server is not None and server.rm is not None
        return os.getpid(), server.rm.rewards([Sample.model_validate(s) for s in PROBES])

    reps = wait_for_replicas("rel", "model-tiny2", 2)
    per_replica = {}
    for name in reps:
        pid, values = ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(score_inside), timeout=60)
        per_replica[pid] = values
    assert len(per_replica) == 2, per_replica
    for values in per_replica.values():
        _close(values, expected)
    for _ in range(10):
        _close(_score(rel_service, "tiny2", PROBES), expected)


def test_same_score_after_the_service_restarts(rel_service: dict, expected: list[float]) -> None:
    """The whole application is deleted and deployed again (new processes, the checkpoint loaded anew)."""
    from ray import serve

    from conftest import deploy_rel

    before = _score(rel_service, "tiny2", PROBES)
    serve.delete("rel")
    try:
        # really gone: /rel/... now falls through to the main app at "/", which knows no such route
        wait_until(lambda: httpx.get(rel_service["url"] + "/healthz", headers=rel_service["headers"],
                                     timeout=10).status_code == 404,
                   timeout=30, interval=0.2, message="the rel app is still routed after serve.delete")
    finally:  # later tests use the app too
        t0 = time.monotonic()
        deploy_rel(rel_service["args"], rel_service["url"])
        print(f"redeployed in {time.monotonic() - t0:.1f} s")
    after = _score(rel_service, "tiny2", PROBES)
    _close(after, before)
    _close(after, expected)


def test_judge_logprob_scores_do_not_depend_on_the_batch(service: dict) -> None:
    items = [{"prompt": "Say hi", "response": "Hi!"},
             {"prompt": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _img(5)}},
                                                       {"type": "text", "text": "Describe it."}]}],
              "response": "Noise."},
             {"prompt": "Explain " + "gravity " * 40, "response": "Mass attracts mass."}]

    def judge(batch: list[dict]) -> list[float]:
        r = httpx.post(service["url"] + "/v1/judge", json={"judge": "judge", "items": batch}, headers=service["headers"],
                       timeout=120)
        assert r.status_code == 200, r.text[:500]
        return [d["value"] for d in r.json()["data"]]

    alone = [judge([it])[0] for it in items]
    _close(judge(items), alone)
    _close(judge(list(reversed(items)))[::-1], alone)
    _close(judge([items[2], items[0], items[1], items[0]])[1:3], [alone[0], alone[1]])
