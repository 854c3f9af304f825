"""Preference-accuracy metrics (numpy; pure functions over arrays, tested against hand-computed cases).

Pinned definitions (one place; the report and the tests use these):

* **verdict** of a pair result: ``"a"`` / ``"b"`` when one side is preferred, ``"tie"`` when neither,
  ``None`` when the result is invalid. Reward models: the sign of ``reward_a - reward_b`` (exact
  equality is a tie). Judges: their own debiased verdict over both presentation orders
  (``details.verdict``: the response both orders prefer, a tie when the orders disagree). Otherwise:
  ``prob_a_wins`` against 0.5.
* **correct**: the verdict names the human-preferred side. A tie is wrong, and so is an invalid
  result (``accuracy`` is mmrm's strict accuracy; ``invalid_rate`` is reported beside it). Each
  benchmark's own definition (unparsed pairs left out, coin flips, half credit for ties) is in
  :mod:`mmrm.eval.official`, and reports show both under distinct names.
* **accuracy**: mean of ``correct`` over all pairs (pooled). **macro accuracy**: the unweighted mean
  of the per-category accuracies.
* **Acc+**: share of prompt groups in which every pair is correct (MM-RLHF-RewardBench).
* **tie rate**: share of valid results whose verdict is a tie. **invalid rate**: share of pairs
  without a result value.
* **swap consistency** (judges): share of valid results whose two presentation orders prefer the
  same response (``details.orders_agree``); a tie in either order is inconsistent.
* **bootstrap 95% interval**: percentile bootstrap, 1,000 resamples, seed 0. Pairs are resampled
  for accuracy; within each category (stratified) for macro accuracy; prompt groups for Acc+.
* **calibration** of p = P(chosen wins) = sigmoid(r_chosen - r_rejected) (for judges their P(A>B)
  mapped to the chosen side). The benchmark label is always "chosen wins", so every pair enters
  twice, as (p, 1) and (1 - p, 0): the reliability curve over [0, 1] is then symmetric and does not
  depend on the presentation order. Ten equal-width bins; ECE = sum over bins of
  (n_bin / n) * |mean outcome - mean p|. (Equal to the top-label ECE with five bins over [0.5, 1].)
* **length bias**: lengths are characters of the response text (media omitted, whitespace
  stripped); pairs with equal lengths are left out. ``human_longer_rate`` = share where the chosen
  response is the longer; ``scorer_longer_rate`` = share of valid results where the scorer strictly
  prefers the longer; ``bias`` = their difference. Accuracy is also split by whether the chosen
  response is the longer or the shorter one.
* **image reliance**: every pair with media is scored again with each image (and video frame)
  replaced by a uniform image of the same size. Over pairs valid in both runs: ``flip_rate`` = share
  whose verdict changes; accuracy with and without images; mean |delta P(chosen wins)|. A scorer
  that ignores the image has a flip rate near 0 and the same accuracy blind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Verdict = str | None  # "a", "b", "tie", or None (invalid)

__all__ = [
    "acc_plus",
    "accuracy",
    "bootstrap_ci",
    "calibration",
    "correct_of",
    "group_all_correct",
    "image_reliance",
    "length_bias",
    "macro_accuracy",
    "per_category",
    "swap_consistency",
    "tie_rate",
    "verdict_of",
]


def verdict_of(*, prob_a_wins: float | None, reward_a: float | None = None, reward_b: float | None = None,
               judge_verdict: str | None = None, invalid: bool = False) -> Verdict:
    """The verdict of one pair result (see the module docs)."""
    if invalid:
        return None
    if judge_verdict is not None:
        return {"A": "a", "B": "b", "tie": "tie"}[judge_verdict]
    if reward_a is not None and reward_b is not None:
        d = reward_a - reward_b
    elif prob_a_wins is not None:
        d = prob_a_wins - 0.5
    else:
        return None
    return "a" if d > 0 else "b" if d < 0 else "tie"


def correct_of(verdicts: Sequence[Verdict], chosen: Sequence[str]) -> np.ndarray:
    """1.0 where the verdict names the chosen side; ties and invalid results are 0."""
    return np.array([1.0 if v is not None and v == c else 0.0 for v, c in zip(verdicts, chosen)], dtype=float)


def accuracy(correct: np.ndarray) -> float:
    return float(np.mean(correct)) if len(correct) else float("nan")


def per_category(correct: np.ndarray, categories: Sequence[str]) -> dict[str, tuple[int, float]]:
    """{category: (n, accuracy)} in first-seen order."""
    cats = np.asarray(categories)
    out: dict[str, tuple[int, float]] = {}
    for c in dict.fromkeys(categories):
        m = cats == c
        out[c] = (int(m.sum()), float(correct[m].mean()))
    return out


def macro_accuracy(correct: np.ndarray, categories: Sequence[str]) -> float:
    """Unweighted mean of the per-category accuracies."""
    per = per_category(correct, categories)
    return float(np.mean([acc for _, acc in per.values()])) if per else float("nan")


def group_all_correct(correct: np.ndarray, groups: Sequence[str]) -> dict[str, bool]:
    """{group: every pair of the group is correct}, in first-seen order."""
    out: dict[str, bool] = {}
    for c, g in zip(correct, groups):
        out[g] = out.get(g, True) and bool(c)
    return out


def acc_plus(correct: np.ndarray, groups: Sequence[str]) -> float:
    """Share of prompt groups whose pairs are all correct."""
    per = group_all_correct(correct, groups)
    return float(np.mean(list(per.values()))) if per else float("nan")


def tie_rate(verdicts: Sequence[Verdict]) -> float:
    valid = [v for v in verdicts if v is not None]
    return float(np.mean([v == "tie" for v in valid])) if valid else float("nan")


def swap_consistency(orders_agree: Sequence[bool | None]) -> float | None:
    """Share of results whose two presentation orders agree; None when no result has per-order info."""
    known = [a for a in orders_agree if a is not None]
    return float(np.mean(known)) if known else None


# --------------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    strata: Sequence[Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` units.

    ``statistic`` receives an index array (a resample of ``range(n)``). With ``strata`` every
    stratum is resampled within itself, keeping its size (for macro accuracy).
    """
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    if strata is None:
        draws = rng.integers(0, n, size=(n_resamples, n))
    else:
        s = np.asarray(strata)
        blocks = [np.flatnonzero(s == v) for v in dict.fromkeys(strata)]
        draws = np.concatenate([b[rng.integers(0, len(b), size=(n_resamples, len(b)))] for b in blocks], axis=1)
    vals = np.array([statistic(ix) for ix in draws], dtype=float)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# Calibration


def calibration(p_chosen: Sequence[float], *, n_bins: int = 10) -> dict[str, Any]:
    """Symmetrized reliability curve and ECE of P(chosen wins) (see the module docs).

    Returns ``{"ece", "n", "bins": [{"lo", "hi", "n", "mean_p", "frac_pos"}, ...]}`` (empty bins have
    ``n == 0`` and ``None`` means).
    """
    p = np.asarray(p_chosen, dtype=float)
    probs = np.concatenate([p, 1.0 - p])
    outcome = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # The same binning as sklearn.calibration.calibration_curve(strategy="uniform").
    idx = np.searchsorted(edges[1:-1], probs, side="right")
    bins = []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        if k:
            mp, fp = float(probs[m].mean()), float(outcome[m].mean())
            ece += k / len(probs) * abs(fp - mp)
        else:
            mp = fp = None
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": k, "mean_p": mp, "frac_pos": fp})
    return {"ece": float(ece) if len(probs) else float("nan"), "n": len(p), "bins": bins}


# --------------------------------------------------------------------------------------------------
# Length bias and image reliance


def length_bias(len_chosen: Sequence[int], len_rejected: Sequence[int], verdicts: Sequence[Verdict],
                chosen: Sequence[str]) -> dict[str, Any]:
    """How often the longer response wins, for the scorer and for the human label."""
    lc, lr = np.asarray(len_chosen), np.asarray(len_rejected)
    use = lc != lr
    chosen_longer = lc > lr
    human = float(chosen_longer[use].mean()) if use.any() else None
    scorer_longer, acc_long, acc_short = [], [], []
    for i in np.flatnonzero(use):
        v = verdicts[i]
        if v is None:
            continue
        longer_side = chosen[i] if chosen_longer[i] else ("b" if chosen[i] == "a" else "a")
        scorer_longer.append(v == longer_side)
        (acc_long if chosen_longer[i] else acc_short).append(v == chosen[i])
    scorer = float(np.mean(scorer_longer)) if scorer_longer else None
    return {
        "n": int(use.sum()),
        "n_equal_length": int((~use).sum()),
        "human_longer_rate": human,
        "scorer_longer_rate": scorer,
        "bias": None if scorer is None or human is None else scorer - human,
        "accuracy_chosen_longer": float(np.mean(acc_long)) if acc_long else None,
        "accuracy_chosen_shorter": float(np.mean(acc_short)) if acc_short else None,
        "n_chosen_longer": len(acc_long),
        "n_chosen_shorter": len(acc_short),
    }


def image_reliance(orig: Sequence[Verdict], blank: Sequence[Verdict], chosen: Sequence[str],
                   p_orig: Sequence[float | None], p_blank: Sequence[float | None]) -> dict[str, Any]:
    """Verdict changes when images are blanked (pairs valid in both runs)."""
    keep = [i for i in range(len(orig)) if orig[i] is not None and blank[i] is not None]
    if not keep:
        return {"n": 0, "flip_rate": None, "accuracy_with_images": None, "accuracy_blank": None, "mean_abs_delta_p": None}
    o = [orig[i] for i in keep]
    b = [blank[i] for i in keep]
    c = [chosen[i] for i in keep]
    deltas = [abs(p_blank[i] - p_orig[i]) for i in keep if p_orig[i] is not None and p_blank[i] is not None]
    return {
        "n": len(keep),
        "flip_rate": float(np.mean([x != y for x, y in zip(o, b)])),
        "accuracy_with_images": accuracy(correct_of(o, c)),
        "accuracy_blank": accuracy(correct_of(b, c)),
        "mean_abs_delta_p": float(np.mean(deltas)) if deltas else None,
    }
