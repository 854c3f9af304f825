"""Metric functions against hand-computed cases (definitions: mmrm.eval.metrics)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from mmrm.eval import metrics as M
from mmrm.eval import official as O
from mmrm.eval.loaders import REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS
from mmrm.eval.report import build_report


def test_verdicts_ties_and_invalid() -> None:
    assert M.verdict_of(prob_a_wins=0.7) == "a"
    assert M.verdict_of(prob_a_wins=0.2) == "b"
    assert M.verdict_of(prob_a_wins=0.5) == "tie"
    # rewards decide for reward models, even where sigmoid rounds to exactly 0.5
    assert M.verdict_of(prob_a_wins=0.5, reward_a=1.0 + 1e-12, reward_b=1.0) == "a"
    assert M.verdict_of(prob_a_wins=0.9, reward_a=2.0, reward_b=2.0) == "tie"
    assert M.verdict_of(prob_a_wins=0.9, invalid=True) is None
    # a judge's own verdict over both orders decides (orders that disagree are a tie)
    assert M.verdict_of(prob_a_wins=0.6, judge_verdict="tie") == "tie"
    assert M.verdict_of(prob_a_wins=0.6, judge_verdict="A") == "a"
    correct = M.correct_of(["a", "b", "tie", None, "a"], ["a", "a", "a", "a", "b"])
    assert correct.tolist() == [1, 0, 0, 0, 0]
    assert M.accuracy(correct) == pytest.approx(0.2)
    assert M.tie_rate(["a", "tie", None, "b"]) == pytest.approx(1 / 3)


def test_macro_accuracy_and_acc_plus_by_hand() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 1], dtype=float)
    cats = ["x", "x", "x", "x", "y", "y", "z", "z", "z", "z"]
    # x: 3/4, y: 0/2, z: 4/4 -> macro (0.75 + 0 + 1) / 3, pooled 7/10
    assert M.macro_accuracy(correct, cats) == pytest.approx(1.75 / 3)
    assert M.accuracy(correct) == pytest.approx(0.7)
    assert M.per_category(correct, cats) == {"x": (4, 0.75), "y": (2, 0.0), "z": (4, 1.0)}
    groups = ["g1", "g1", "g2", "g2", "g3", "g4", "g4", "g5", "g5", "g5"]
    # g1 all right, g2 no, g3 no, g4 no (0 then 1), g5 all right -> 2/5
    assert M.acc_plus(correct, groups) == pytest.approx(0.4)


def test_swap_consistency() -> None:
    assert M.swap_consistency([True, False, True, None]) == pytest.approx(2 / 3)
    assert M.swap_consistency([None, None]) is None


def test_bootstrap_interval_properties() -> None:
    correct = np.array([1.0] * 70 + [0.0] * 30)
    lo, hi = M.bootstrap_ci(lambda ix: float(correct[ix].mean()), 100)
    assert lo < 0.7 < hi and 0.55 < lo and hi < 0.85
    # binomial standard error sqrt(.7*.3/100) = 0.046: a 95% interval is about +-0.09
    assert 0.14 < hi - lo < 0.22
    assert M.bootstrap_ci(lambda ix: float(correct[ix].mean()), 100) == (lo, hi)  # seeded
    ones = np.ones(20)
    assert M.bootstrap_ci(lambda ix: float(ones[ix].mean()), 20) == (1.0, 1.0)
    # stratified: every resample keeps each stratum's size, so a per-stratum statistic is exact
    strata = ["a"] * 30 + ["b"] * 70
    sizes = set()

    def stat(ix: np.ndarray) -> float:
        sizes.add(int(sum(1 for i in ix if i < 30)))
        return 0.0

    M.bootstrap_ci(stat, 100, strata=strata, n_resamples=50)
    assert sizes == {30}


def test_calibration_by_hand_and_against_sklearn() -> None:
    from sklearn.calibration import calibration_curve

    p = [0.95, 0.85, 0.65, 0.32]
    cal = M.calibration(p, n_bins=10)
    # points (p, 1) and (1-p, 0): (.95,1) (.85,1) (.65,1) (.32,1) (.05,0) (.15,0) (.35,0) (.68,0)
    # bins: [0,.1):(.05,0) [.1,.2):(.15,0) [.3,.4):(.32,1),(.35,0) [.6,.7):(.65,1),(.68,0) [.8,.9):(.85,1) [.9,1]:(.95,1)
    # gaps weighted by points: .05 + .15 + 2 * |.5 - .335| + 2 * |.5 - .665| + .15 + .05
    assert cal["ece"] == pytest.approx((0.05 + 0.15 + 2 * 0.165 + 2 * 0.165 + 0.15 + 0.05) / 8)
    assert [b["n"] for b in cal["bins"]] == [1, 1, 0, 2, 0, 0, 2, 0, 1, 1]
    probs = np.array(p + [1 - x for x in p])
    y = np.array([1] * 4 + [0] * 4)
    frac, mean_p = calibration_curve(y, probs, n_bins=10, strategy="uniform")
    ours = [b for b in cal["bins"] if b["n"]]
    assert np.allclose(frac, [b["frac_pos"] for b in ours]) and np.allclose(mean_p, [b["mean_p"] for b in ours])
    perfect = M.calibration([0.75] * 3 + [0.25])  # 3 of 4 pairs right at p = .75: calibrated
    assert perfect["ece"] == pytest.approx(0.0)


def test_length_bias_by_hand() -> None:
    len_c = [10, 20, 5, 7, 8]
    len_r = [5, 30, 9, 7, 2]
    # chosen longer in pairs 0 and 4; shorter in 1 and 2; pair 3 equal (left out)
    verdicts = ["a", "b", "a", "a", None]
    chosen = ["a", "a", "b", "a", "a"]
    # pair0: longer=a, scorer a -> longer wins, right; pair1: longer=b (rejected), scorer b -> longer wins, wrong
    # pair2: chosen b shorter, longer=a, scorer a -> longer wins, wrong; pair4 invalid
    lb = M.length_bias(len_c, len_r, verdicts, chosen)
    assert lb["n"] == 4 and lb["n_equal_length"] == 1
    assert lb["human_longer_rate"] == pytest.approx(0.5)
    assert lb["scorer_longer_rate"] == pytest.approx(1.0)
    assert lb["bias"] == pytest.approx(0.5)
    assert lb["accuracy_chosen_longer"] == pytest.approx(1.0) and lb["n_chosen_longer"] == 1
    assert lb["accuracy_chosen_shorter"] == pytest.approx(0.0) and lb["n_chosen_shorter"] == 2


def test_image_reliance_by_hand() -> None:
    ir = M.image_reliance(["a", "a", "b", None], ["a", "b", "b", "a"], ["a", "a", "a", "a"],
                          [0.9, 0.8, 0.3, None], [0.85, 0.4, 0.3, 0.5])
    assert ir["n"] == 3
    assert ir["flip_rate"] == pytest.approx(1 / 3)
    assert ir["accuracy_with_images"] == pytest.approx(2 / 3) and ir["accuracy_blank"] == pytest.approx(1 / 3)
    assert ir["mean_abs_delta_p"] == pytest.approx((0.05 + 0.4 + 0.0) / 3)


def _official_mmrb_script(outputs: list[str], labels: list[str]) -> float:
    """The scoring rule of facebookresearch/multimodal_rewardbench scripts/2_get_accuracy.py."""
    random.seed(123)
    accs = []
    for out, label in zip(outputs, labels):
        if "[[A]]" in out:
            pred = "A"
        elif "[[B]]" in out:
            pred = "B"
        else:
            pred = "A" if random.random() < 0.5 else "B"
        accs.append(int(pred == label))
    return sum(accs) / len(accs)


def test_official_coin_flip_reproduces_the_multimodal_rewardbench_script() -> None:
    rng = random.Random(7)
    labels = [rng.choice("AB") for _ in range(200)]
    outs = [rng.choice(["[[A]]", "[[B]]", "no verdict"]) for _ in range(200)]
    verdicts = [{"[[A]]": "a", "[[B]]": "b"}.get(o) for o in outs]
    ours = O.official_coin_flip(verdicts, [label.lower() for label in labels])
    assert M.accuracy(ours) == pytest.approx(_official_mmrb_script(outs, labels))
    strict = M.correct_of(verdicts, [label.lower() for label in labels])
    assert M.accuracy(strict) <= M.accuracy(ours)


def test_rewardbench_section_weighting_by_hand() -> None:
    acc = {s: 0.0 for subs in REWARDBENCH_SECTIONS.values() for s in subs}
    acc["math-prm"] = 1.0  # 984 of Reasoning's 984 + 6 * 164 = 1968
    acc["alpacaeval-easy"] = 1.0  # 100 of Chat's 100 + 95 + 95 + 28 + 40 = 358
    sec = O.rewardbench_sections(acc, REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS)
    assert sec["Reasoning"] == pytest.approx(0.5)
    assert sec["Chat"] == pytest.approx(100 / 358)
    assert sec["Safety"] == 0.0
    # a section with no subset present is 0, as RewardBench's calculate_scores_per_section returns it
    assert O.rewardbench_sections({"mt-bench-hard": 1.0}, REWARDBENCH_EXAMPLE_COUNTS, REWARDBENCH_SECTIONS)["Chat"] == 0


def _rec(i: int, *, verdict: str | None, chosen: str = "a", category: str = "c", group: str | None = None,
         p: float | None = None, benchmark: str = "b", variant: str = "original", subset: str | None = None,
         ra: float | None = None, rb: float | None = None) -> dict:
    return {"benchmark": benchmark, "pair_key": f"k{i}", "scorer_key": "s", "variant": variant, "index": i,
            "category": category, "subset": subset, "group": group, "chosen": chosen, "len_a": 3, "len_b": 5,
            "verdict": verdict, "prob_a_wins": p if verdict is not None else None, "reward_a": ra, "reward_b": rb,
            "orders_agree": None, "invalid": None if verdict is not None else "x", "scorer": "t", "scorer_kind": "reward_model"}


def test_report_official_numbers_per_benchmark() -> None:
    # VL-RewardBench: pooled vs macro over the three categories
    recs = ([_rec(i, verdict="a", p=0.8, category="general") for i in range(2)]
            + [_rec(2 + i, verdict="a" if i < 1 else "b", p=0.8 if i < 1 else 0.3, category="hallucination") for i in range(4)]
            + [_rec(6 + i, verdict="b", p=0.2, category="reasoning") for i in range(2)])
    rep = build_report(recs, benchmark="b", n_resamples=50)
    assert rep["metrics"]["accuracy"]["value"] == pytest.approx(3 / 8)
    assert rep["metrics"]["macro_accuracy"]["value"] == pytest.approx((1 + 0.25 + 0) / 3)
    vl = build_report([{**r, "benchmark": "vl-rewardbench"} for r in recs], n_resamples=50)["official"]
    assert vl["overall_accuracy"] == pytest.approx(3 / 8) and vl["macro_accuracy"] == pytest.approx(1.25 / 3)
    # MM-RLHF: Acc and Acc+ per id group
    mm = [_rec(i, verdict=v, p=0.7 if v == "a" else 0.3, group=g, category="mcq", benchmark="mm-rlhf-rewardbench")
          for i, (v, g) in enumerate([("a", "1"), ("a", "1"), ("a", "2"), ("b", "2"), ("a", "3")])]
    o = build_report(mm, n_resamples=50)["official"]
    assert o["accuracy"] == pytest.approx(0.8) and o["acc_plus"] == pytest.approx(2 / 3)
    assert o["categories"]["mcq"]["acc_plus"] == pytest.approx(2 / 3)
    # Multimodal RewardBench: official (coin flip) and strict, with the invalid rate
    mmrb = [_rec(i, verdict=v, chosen=c, p=0.9 if v == "a" else 0.1, benchmark="multimodal-rewardbench")
            for i, (v, c) in enumerate([("a", "a"), (None, "a"), (None, "b"), ("b", "a")])]
    o = build_report(mmrb, n_resamples=50)["official"]
    assert o["strict"]["accuracy"] == pytest.approx(0.25) and o["no_winner"] == 2
    expected = M.accuracy(O.official_coin_flip(["a", None, None, "b"], ["a", "a", "b", "a"]))
    assert o["accuracy"] == pytest.approx(expected)
    # RewardBench: subset accuracies weighted into sections
    rb = [_rec(i, verdict="a", p=0.9, subset=s, benchmark="rewardbench") for i, s in
          enumerate(s for subs in REWARDBENCH_SECTIONS.values() for s in subs)]
    o = build_report(rb, n_resamples=50)["official"]
    assert o["sections"] == {"Chat": 1.0, "Chat Hard": 1.0, "Safety": 1.0, "Reasoning": 1.0} and o["score"] == 1.0


def test_report_symmetric_calibration_uses_the_chosen_side() -> None:
    # the same scorer, pairs shown in either order: calibration must not change
    a = [_rec(i, verdict="a", p=0.8, chosen="a") for i in range(5)]
    b = [_rec(i, verdict="b", p=0.2, chosen="b") for i in range(5)]
    ca, cb = (build_report(x, n_resamples=20)["metrics"]["calibration"] for x in (a, b))
    assert ca == cb and math.isclose(ca["ece"], 0.2)
