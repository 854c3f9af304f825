"""Pure scoring arithmetic: label distributions, expected values, and pairwise swap debiasing.

Pinned rules (documented here once; tests compute them independently):

* **label distribution**: the probability of a label is the sum of the probabilities of the tokens
  whose text, stripped of whitespace, equals the label, read at the verdict position. ``mass`` is
  the sum over all labels; when it is below the judge's ``min_label_mass`` the result is
  ``invalid``; otherwise the distribution is renormalized over the labels.
* **expected value** over a scale: sum of p(label) x int(label) under the renormalized distribution.
* **pairwise**, per order: P(shown-first wins) = p(A) + p(tie) / 2. For the order (B, A), A is shown
  second, so P(A wins) = p(B) + p(tie) / 2. Debiased P(A>B) is the mean of the two orders' P(A
  wins). Each order's verdict is its most probable label (ties between labels: A, then B, then tie),
  mapped back to the original responses. The orders *agree* when both prefer the same response;
  the debiased verdict is that response, and ``tie`` when they disagree or both say tie.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["A", "B", "tie"]
PAIR_LABELS: tuple[str, str, str] = ("A", "B", "tie")


def renormalize(probs: dict[str, float]) -> tuple[dict[str, float], float]:
    """(distribution renormalized over the labels, total mass before renormalizing)."""
    mass = float(sum(probs.values()))
    if mass <= 0.0:
        return {k: 0.0 for k in probs}, 0.0
    return {k: v / mass for k, v in probs.items()}, mass


def one_hot(labels: tuple[str, ...] | list[str], chosen: str) -> dict[str, float]:
    """The degenerate distribution of a parsed (sampled or schema) answer."""
    return {lab: (1.0 if lab == chosen else 0.0) for lab in labels}


def expected_value(dist: dict[str, float]) -> float:
    """Expected integer label under a normalized distribution over digit labels."""
    return float(sum(p * int(lab) for lab, p in dist.items()))


def order_verdict(dist: dict[str, float]) -> Verdict:
    """Most probable of A, B, tie (in that order on exact ties)."""
    best = max(PAIR_LABELS, key=lambda lab: (dist.get(lab, 0.0), -PAIR_LABELS.index(lab)))
    return best  # type: ignore[return-value]


def debias_pair(dist_ab: dict[str, float], dist_ba: dict[str, float]) -> dict[str, object]:
    """Combine the two presentation orders of one pair (``dist_*``: normalized over A, B, tie).

    ``dist_ab`` is the judge's answer when shown (A, B); ``dist_ba`` when shown (B, A), where its
    label "A" means the original response B.
    """
    p_a_ab = dist_ab["A"] + 0.5 * dist_ab["tie"]
    p_a_ba = dist_ba["B"] + 0.5 * dist_ba["tie"]
    v_ab = order_verdict(dist_ab)
    v_ba_raw = order_verdict(dist_ba)
    v_ba: Verdict = {"A": "B", "B": "A", "tie": "tie"}[v_ba_raw]  # type: ignore[assignment]
    agree = v_ab == v_ba and v_ab != "tie"
    return {
        "prob_a_wins": 0.5 * (p_a_ab + p_a_ba),
        "verdict": v_ab if agree else "tie",
        "orders_agree": agree,
        "per_order": [
            {"order": "AB", "prob_a_wins": p_a_ab, "verdict": v_ab, "probs": dict(dist_ab)},
            {"order": "BA", "prob_a_wins": p_a_ba, "verdict": v_ba, "probs": dict(dist_ba)},
        ],
    }
