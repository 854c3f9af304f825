"""A reasoning preset served by ``/v1/judge`` and ``/v1/rank`` over real HTTP equals the same judge in process.

The preset is a user's YAML file whose answer tag is text the tiny judge model really writes, so the
served judge generates its reasoning, stops at the tag, and reads the verdict distribution, on the
session's Ray cluster and Serve proxy (an extra application next to the ``service`` fixture's).
"""

from __future__ import annotations

from collections.abc import Iterator

from pathlib import Path

import httpx
import pytest
import yaml

from helpers import wait_until
from mmrm.judges import Judge, JudgeOptions
from mmrm.judges.backends.base import GenRequest
from mmrm.judges.presets import load_preset
from mmrm.judges.reasoning import build_query
from mmrm.rm.types import Group, Message, Pair, as_response

pytestmark = pytest.mark.slow

PROMPT = "Compare the two answers."
PAIRS = [Pair(prompt=PROMPT, response_a="yes", response_b="no"),
         Pair(prompt="Which is the capital of France?", response_a="Paris.", response_b="Lyon, I think.")]
OPTIONS = {"min_label_mass": 0.0, "reasoning_tokens": 24, "rank_strategy": "bradley_terry"}
GROUP = Group(prompt=PROMPT, responses=["yes", "no", "maybe"])


@pytest.fixture(scope="module")
def hf_backend(tiny_qwen2_vl: Path):
    from mmrm.judges.backends.hf import HFJudgeBackend

    return HFJudgeBackend(tiny_qwen2_vl)


@pytest.fixture(scope="module")
def greedy_preset(hf_backend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """r1_reward with its answer tag replaced by four characters the model writes greedily."""
    r1 = load_preset("r1_reward")
    msgs = build_query(r1, [Message(role="user", content=PROMPT)], [as_response("yes"), as_response("no")])
    [free] = hf_backend.generate([GenRequest(msgs, max_tokens=24)])
    assert free.text and len(free.text) > 12
    data = r1.model_dump(mode="json")
    data.update(name="greedy_tag", slot={"open": free.text[8:12], "prefix": "", "labels": {"1": "first", "2": "second"}})
    path = tmp_path_factory.mktemp("presets") / "greedy_tag.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def reasoning_app(service: dict, greedy_preset: Path, tiny_qwen2_vl: Path) -> Iterator[str]:
    from ray import serve

    from mmrm.serve.app import build_app

    judge = {"name": "thinker", "backend": {"type": "hf", "model": str(tiny_qwen2_vl)}, "judge": OPTIONS,
             "rubrics": [str(greedy_preset), "r1_reward"], "default_rubric": "greedy_tag", "num_cpus": 0.5}
    capped = {**judge, "name": "capped", "judge": {**OPTIONS, "max_queries": 8}}
    args = {"judges": [judge, capped], "auth": {"token_env": "MMRM_TEST_API_TOKEN"}}
    serve.run(build_app(args), name="reasoning", route_prefix="/reasoning", blocking=False)
    url = service["url"] + "/reasoning"
    wait_until(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200, timeout=120, interval=0.5,
               message="the reasoning app is not routed by the proxy")
    yield url
    serve.delete("reasoning")  # frees its replicas' CPUs: later tests (Ray Train) need the room


def test_v1_judge_with_a_reasoning_preset_equals_in_process(reasoning_app: str, service: dict, hf_backend, greedy_preset: Path) -> None:
    body = {"judge": "thinker", "pairs": [p.model_dump(mode="json") for p in PAIRS]}
    r = httpx.post(reasoning_app + "/v1/judge", json=body, headers=service["headers"], timeout=300)
    assert r.status_code == 200, r.text
    served = r.json()["data"]
    local = Judge(greedy_preset, hf_backend, JudgeOptions(**OPTIONS)).compare(PAIRS)
    assert len(served) == len(local) == 2
    for s, w in zip(served, local):
        assert w.ok and w.details["path"] == "probability"
        assert s["value"] == pytest.approx(w.value, abs=1e-6) and s["prob_a_wins"] == pytest.approx(w.prob_a_wins, abs=1e-6)
        for so, wo in zip(s["details"]["per_order"], w.details["per_order"]):
            assert so["samples"][0]["reasoning"] == wo["samples"][0]["reasoning"]
            assert so["probs"]["A"] == pytest.approx(wo["probs"]["A"], abs=1e-6)
    # A shipped preset named by the request: the random model never reaches <answer> in 24 tokens.
    r2 = httpx.post(reasoning_app + "/v1/judge", json={**body, "rubric": "r1_reward"}, headers=service["headers"], timeout=300)
    assert r2.status_code == 200, r2.text
    assert [d["error_kind"] for d in r2.json()["data"]] == ["budget_exhausted"] * 2


def test_v1_rank_with_a_reasoning_preset_equals_in_process(reasoning_app: str, service: dict, hf_backend, greedy_preset: Path) -> None:
    body = {"model": "thinker", "groups": [GROUP.model_dump(mode="json")]}
    r = httpx.post(reasoning_app + "/v1/rank", json=body, headers=service["headers"], timeout=300)
    assert r.status_code == 200, r.text
    [served] = r.json()["data"]
    [local] = Judge(greedy_preset, hf_backend, JudgeOptions(**OPTIONS)).rank([GROUP])
    assert all(x.ok for x in local.results)
    assert [x["value"] for x in served["results"]] == pytest.approx([x.value for x in local.results], abs=1e-6)
    assert served["normalized"] == pytest.approx(local.normalized, abs=1e-6)
    assert served["results"][0]["details"]["backend_calls"] == 3 * 2 * 2  # 3 pairs x 2 orders x (reasoning + read)
    over = httpx.post(reasoning_app + "/v1/rank", json={**body, "model": "capped"}, headers=service["headers"], timeout=300)
    assert over.status_code == 422, over.text
    err = over.json()["error"]
    assert err["field"] == "max_queries" and err["limit"] == 8 and "needs 12 backend calls" in err["message"]
