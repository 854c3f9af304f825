"""Ranking a GRPO group with a generative (preset) judge: anchor, Bradley-Terry, knockout.

The backend is scripted: for the pair shown (X first, Y second) its verdict read gives
P(first wins) = sigmoid(q_X - q_Y) for hidden strengths q, so the debiased P(X > Y) is exactly
sigmoid(q_X - q_Y) and the Bradley-Terry fit must recover q (up to its small ridge); the knockout
bracket and the call counts are worked out by hand here.
"""

from __future__ import annotations

import math
import re

import pytest

from mmrm.judges import Judge, JudgeOptions
from mmrm.judges.backends.base import GenReply, LabelReply
from mmrm.judges.ranking import BT_RIDGE
from mmrm.rm.errors import BackendError, LimitExceeded
from mmrm.rm.types import Group

Q = {"r0": 1.0, "r1": -0.5, "r2": 0.3, "r3": 2.0, "r4": -1.2}
SHOWN = re.compile(r"\[Response 1\]:\n(\w+)  \n\n###### \[Response 2\]:\n(\w+)  ")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Strengths:
    """Scripted reasoning backend: P(first shown wins) = sigmoid(q_first - q_second); 'bad' faults."""

    engine, scorer_id, dtype = "hf", "scripted", None
    supports_logprobs = supports_prefill = True
    supports_json_schema = False

    def __init__(self) -> None:
        self.calls = 0

    def check_labels(self, prefill, labels) -> None:
        pass

    def config_fingerprint(self):
        return {"engine": "scripted"}

    def generate(self, requests):
        self.calls += len(requests)
        return [GenReply(text="<think>compared</think>", finish_reason="stop", stop="<answer>") for _ in requests]

    def label_probs(self, requests):
        self.calls += len(requests)
        out = []
        for r in requests:
            a, b = SHOWN.search(r.messages[-1].content[-1].text).groups()
            if "bad" in (a, b):
                out.append(LabelReply(error=BackendError("scripted fault")))
                continue
            p = _sigmoid(Q[a] - Q[b])
            out.append(LabelReply(probs={"1": p, "2": 1 - p}, top_k=None))
        return out


def _group(names: list[str]) -> Group:
    return Group(prompt="Which answer is best?", responses=names)


def test_bradley_terry_recovers_the_strengths_and_states_its_calls() -> None:
    b = Strengths()
    names = ["r0", "r1", "r2", "r3", "r4"]
    [g] = Judge("r1_reward", b, JudgeOptions(rank_strategy="bradley_terry", min_label_mass=0.0)).rank([_group(names)])
    want = [Q[n] - sum(Q.values()) / len(Q) for n in names]
    got = [r.value for r in g.results]
    err = max(abs(x - y) for x, y in zip(got, want))
    print(f"max |s_fit - q| = {err:.3g} (ridge {BT_RIDGE})")
    assert err < 0.05
    assert [n for _, n in sorted(zip(got, names), reverse=True)] == ["r3", "r0", "r2", "r1", "r4"]
    calls = 10 * 2 * 2  # 10 pairs x 2 orders x (reasoning + verdict read)
    assert b.calls == calls and g.results[0].details["backend_calls"] == calls and g.results[0].details["valid_pairs"] == 10
    assert g.normalized[3] == max(g.normalized)  # type: ignore[type-var]


def test_anchor_against_a_reference_or_a_member() -> None:
    b = Strengths()
    judge = Judge("r1_reward", b, JudgeOptions(rank_strategy="anchor", min_label_mass=0.0))
    [g] = judge.rank([_group(["r0", "r1", "r3"])])  # anchor: response 0
    assert [r.value for r in g.results] == pytest.approx([0.5, _sigmoid(-1.5), _sigmoid(1.0)])
    assert b.calls == 2 * 2 * 2 and g.results[1].details["backend_calls"] == 8
    [h] = judge.rank([_group(["r0", "r1"])], references=["r2"])
    assert [r.value for r in h.results] == pytest.approx([_sigmoid(0.7), _sigmoid(-0.8)])


def test_knockout_bracket_byes_and_invalid_matches() -> None:
    b = Strengths()
    judge = Judge("r1_reward", b, JudgeOptions(rank_strategy="knockout", min_label_mass=0.0))
    [g] = judge.rank([_group(["r0", "r1", "r2", "r3"])])
    # round 1: r0 beats r1, r3 beats r2; final: r3 beats r0; two rounds
    assert [r.value for r in g.results] == [0.5, 0.0, 0.0, 1.0]
    assert b.calls == 3 * 2 * 2 and g.results[0].details["backend_calls"] == 12
    [odd] = judge.rank([_group(["r1", "r3", "r0"])])  # r0 has a bye in round 1, then loses to r3
    assert [r.value for r in odd.results] == [0.0, 1.0, 0.5]
    [broken] = judge.rank([_group(["r0", "bad", "r2", "r3"])])
    assert not broken.results[0].ok and not broken.results[1].ok and "scripted fault" in broken.results[1].invalid
    assert broken.results[3].value == 1.0 and broken.results[2].value == 0.0  # r3 wins the final by a bye


def test_a_rank_over_max_queries_is_refused_with_the_count_and_the_limit() -> None:
    b = Strengths()
    judge = Judge("r1_reward", b, JudgeOptions(rank_strategy="bradley_terry", max_queries=39, min_label_mass=0.0))
    with pytest.raises(LimitExceeded, match="needs 40 backend calls.*max_queries is 39") as e:
        judge.rank([_group(["r0", "r1", "r2", "r3", "r4"])])
    assert e.value.limit == 39 and b.calls == 0  # refused before any call, never truncated
    ok = Judge("r1_reward", b, JudgeOptions(rank_strategy="knockout", max_queries=16, min_label_mass=0.0))
    assert ok.rank([_group(["r0", "r1", "r2", "r3", "r4"])])[0].results[3].value == 1.0  # 4 matches x 4 = 16 calls
    assert b.calls == 16
