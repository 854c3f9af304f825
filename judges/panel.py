"""Panels: several judges on the same items, aggregated, with their agreement reported.

Aggregation: the mean (or median) of the valid members' values; an item is ``invalid`` when fewer
than ``min_valid`` members produced a value.

Agreement statistics (pinned):

* per item, scores: ``1 - mean |s_i - s_j|`` over all pairs of valid members (values in [0, 1], so
  1 is perfect agreement, 0 is maximal disagreement);
* per item, pairs: **pairwise percent agreement**: the fraction of pairs of valid members whose
  debiased verdicts (A / B / tie) are equal;
* per batch, pairs: **Fleiss' kappa** over the verdict categories (A, B, tie), on the items where
  every member is valid (:func:`fleiss_kappa`), returned by :meth:`Panel.compare_with_agreement`.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from mmrm.judges.judge import Judge
from mmrm.rm.scorer import GroupResult, rank_pointwise
from mmrm.rm.types import Group, Pair, Provenance, ResponseLike, Sample, ScoreResult


def fleiss_kappa(ratings: Sequence[Sequence[str]], categories: Sequence[str] = ("A", "B", "tie")) -> float | None:
    """Fleiss' kappa of items x raters categorical ratings (same number of raters per item).

    Returns None when it is undefined (fewer than 2 items or raters, or chance agreement is 1).
    """
    if len(ratings) < 2 or len(ratings[0]) < 2:
        return None
    n = len(ratings[0])
    if any(len(r) != n for r in ratings):
        raise ValueError("every item needs the same number of ratings")
    counts = [[sum(1 for x in r if x == c) for c in categories] for r in ratings]
    p_items = [(sum(k * k for k in row) - n) / (n * (n - 1)) for row in counts]
    p_bar = sum(p_items) / len(p_items)
    p_cat = [sum(row[j] for row in counts) / (len(ratings) * n) for j in range(len(categories))]
    p_e = sum(p * p for p in p_cat)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def _score_agreement(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    diffs = [abs(a - b) for a, b in itertools.combinations(values, 2)]
    return 1.0 - sum(diffs) / len(diffs)


def _verdict_agreement(verdicts: list[str]) -> float | None:
    if len(verdicts) < 2:
        return None
    pairs = list(itertools.combinations(verdicts, 2))
    return sum(a == b for a, b in pairs) / len(pairs)


class Panel:
    """Several judges, aggregated; a :class:`~mmrm.rm.scorer.Scorer` like each of them.

    Args:
        judges: the members (any backends; each batches its own queries).
        aggregate: ``mean`` or ``median`` of the valid members' values.
        min_valid: members that must produce a value for the item to be valid.
        name: scorer id of the panel in provenance.
    """

    def __init__(self, judges: Sequence[Judge], *, aggregate: Literal["mean", "median"] = "mean", min_valid: int = 1,
                 name: str = "panel") -> None:
        if not judges:
            raise ValueError("a panel needs at least one judge")
        if not 1 <= min_valid <= len(judges):
            raise ValueError(f"min_valid={min_valid} must be between 1 and the number of judges ({len(judges)})")
        self.judges = list(judges)
        self.aggregate = aggregate
        self.min_valid = min_valid
        self.name = name

    @property
    def provenance(self) -> Provenance:
        import hashlib

        fp = hashlib.sha256("|".join(j.fingerprint for j in self.judges).encode() + self.aggregate.encode()).hexdigest()[:16]
        engines = sorted({j.backend.engine for j in self.judges})
        return Provenance(scorer=self.name, kind="judge", fingerprint=fp, engine="+".join(engines))

    def _combine(self, member_results: list[list[ScoreResult]], pairwise: bool) -> list[ScoreResult]:
        out = []
        for i in range(len(member_results[0])):
            res = [m[i] for m in member_results]
            members: list[dict[str, Any]] = [
                {"scorer": j.provenance.scorer, "value": r.value, "invalid": r.invalid, "verdict": r.details.get("verdict")}
                for j, r in zip(self.judges, res)
            ]
            valid = [r for r in res if r.ok]
            if len(valid) < self.min_valid:
                # The kind is the first failed member's (what went wrong); the reason says how many failed.
                kind = next(r.error_kind for r in res if not r.ok) or "invalid_output"
                out.append(ScoreResult(value=None, invalid=f"{len(valid)} of {len(res)} judges produced a value (min_valid={self.min_valid})",
                                       error_kind=kind, details={"members": members}, provenance=self.provenance))
                continue
            vals = [float(r.value) for r in valid]  # type: ignore[arg-type]
            value = statistics.fmean(vals) if self.aggregate == "mean" else statistics.median(vals)
            details: dict[str, Any] = {"members": members, "aggregate": self.aggregate, "n_valid": len(valid)}
            if pairwise:
                details["agreement"] = _verdict_agreement([str(r.details["verdict"]) for r in valid])
                details["agreement_statistic"] = "pairwise_percent_agreement_of_verdicts"
            else:
                details["agreement"] = _score_agreement(vals)
                details["agreement_statistic"] = "one_minus_mean_abs_pairwise_difference"
            out.append(ScoreResult(value=value, prob_a_wins=value if pairwise else None, details=details, provenance=self.provenance))
        return out

    def score(self, samples: Sequence[Sample], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Aggregated pointwise scores with per-item agreement."""
        return self._combine([j.score(samples, references=references) for j in self.judges], pairwise=False)

    def compare(self, pairs: Sequence[Pair], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Aggregated P(A>B) with per-item verdict agreement."""
        return self._combine([j.compare(pairs, references=references) for j in self.judges], pairwise=True)

    def rank(self, groups: Sequence[Group], *, references: Sequence[ResponseLike | None] | None = None,
             eps: float = 1e-6) -> list[GroupResult]:
        """Aggregated pointwise scores per response, normalized per group like reward groups
        (``references``: one per group); an invalid response is left out of the normalization."""
        return rank_pointwise(self.score, groups, references=references, eps=eps)

    def compare_with_agreement(self, pairs: Sequence[Pair], *, references: Sequence[ResponseLike | None] | None = None
                               ) -> tuple[list[ScoreResult], float | None]:
        """:meth:`compare` plus Fleiss' kappa over the items where every member is valid."""
        results = self.compare(pairs, references=references)
        rows = [[m["verdict"] for m in r.details["members"]] for r in results
                if all(m["invalid"] is None for m in r.details.get("members", [{"invalid": "x"}]))]
        return results, fleiss_kappa(rows)
