"""Changing a running app's config (a new checkpoint, new batch knobs) drops no request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_qwen2_vl: Path) -> Path:
    from mmrm.rm.reward_model import RewardModel

    return RewardModel.from_backbone(tiny_qwen2_vl, seed=11).save_pretrained(tmp_path_factory.mktemp("rm2") / "tiny-rm-2")


def test_live_update_swaps_checkpoint_and_knobs_without_dropping_requests(
    service: dict, reward_checkpoint: Path, second_checkpoint: Path
) -> None:
    from ray import serve

    from mmrm.rm import checkpoint as ckpt
    from mmrm.serve.app import build_app

    def args(checkpoint: Path, batch: int) -> dict:
        return {"models": [{"name": "live", "checkpoint": str(checkpoint), "num_cpus": 0.5,
                            "max_batch_size": batch, "batch_wait_timeout_s": 0.01}],
                "auth": {"token_env": "MMRM_TEST_API_TOKEN"}}

    serve.run(build_app(args(reward_checkpoint, 8)), name="live", route_prefix="/live")
    url = service["url"] + "/live/v1/score"
    body = {"model": "live", "items": [{"prompt": "Is this the old or the new model?", "response": "Yes."}]}
    first = httpx.post(url, json=body, headers=service["headers"], timeout=60).json()["data"][0]
    assert first["provenance"]["fingerprint"] == ckpt.fingerprint(reward_checkpoint)

    codes: list[int] = []
    fingerprints: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(headers=service["headers"], timeout=120) as c:
            while not stop.is_set():
                r = c.post(url, json=body)
                codes.append(r.status_code)
                if r.status_code == 200:
                    fingerprints.append(r.json()["data"][0]["provenance"]["fingerprint"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # Only user_config (checkpoint + batch knobs) of the model deployment changes: Serve calls
    # reconfigure() on the live replica, which loads the new checkpoint beside the old one and swaps.
    serve.run(build_app(args(second_checkpoint, 4)), name="live", route_prefix="/live")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    new = ckpt.fingerprint(second_checkpoint)
    assert fingerprints[-1] == new and fingerprints[0] == first["provenance"]["fingerprint"]
    after = httpx.post(url, json=body, headers=service["headers"], timeout=60).json()["data"][0]
    assert after["provenance"]["fingerprint"] == new and after["value"] != pytest.approx(first["value"], abs=1e-6)
    serve.delete("live")


def test_request_deadline_is_504_and_the_service_keeps_serving(service: dict, reward_checkpoint: Path) -> None:
    from ray import serve

    from mmrm.serve.app import build_app

    args = {"models": [{"name": "slowpoke", "checkpoint": str(reward_checkpoint), "num_cpus": 0.5}],
            "limits": {"request_timeout_s": 0.2}, "auth": {"token_env": "MMRM_TEST_API_TOKEN"}}
    serve.run(build_app(args), name="deadline", route_prefix="/deadline")
    try:
        url = service["url"] + "/deadline/v1/score"
        long = {"model": "slowpoke", "items": [{"prompt": "word " * 900, "response": f"answer {i}"} for i in range(48)]}
        r = httpx.post(url, json=long, headers=service["headers"], timeout=120)
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["kind"] == "timeout" and err["limit"] == 0.2
        # The abandoned forward may still occupy the replica for a while (a running forward pass is
        # not interrupted); the service must answer again once it is done.
        short = {"model": "slowpoke", "items": [{"prompt": "p", "response": "r"}]}
        codes = []

        def answers() -> bool:
            codes.append(httpx.post(url, json=short, headers=service["headers"], timeout=60).status_code)
            assert codes[-1] in (200, 504), codes
            return codes[-1] == 200

        wait_until(answers, timeout=180, interval=1, message=lambda: f"still no 200: {codes}")
    finally:
        serve.delete("deadline")
