"""Ranking a GRPO group with pairwise judgments (``JudgeOptions.rank_strategy``).

Every strategy judges pairs with :meth:`Judge.compare` (both orders, debiased), batched across all
groups of the call, and states its cost before running: ``details.backend_calls`` (first attempts,
all groups). A call whose count exceeds ``max_queries`` is refused with the count and the limit
(:class:`~mmrm.rm.errors.LimitExceeded`), never truncated. For a group of n responses:

* ``anchor``: each response against the group's reference (n pairs), or, without one, against
  response ``anchor`` (n - 1 pairs; the anchor's own value is 0.5). Value: P(response > anchor).
* ``bradley_terry``: all n(n-1)/2 pairs, both orders; Bradley-Terry strengths fitted to the debiased
  P(i > j) as soft outcomes by maximum likelihood (``scipy.optimize.minimize``, L-BFGS-B) with a
  small ridge (``BT_RIDGE`` x sum s^2, so that a response that wins everything has a finite
  strength), centered to mean 0. Value: the strength. A pair whose judgment is invalid is left out
  of the fit; a response left with no valid pair is invalid.
* ``knockout``: a single-elimination bracket in group order ((0, 1), (2, 3), ...; an odd one out gets
  a bye), n - 1 matches in ceil(log2 n) rounds; P(A>B) >= 0.5 sends A on. An invalid match
  eliminates both sides, whose results are invalid with the match's reason (no coin). Value: rounds
  won (byes included) / rounds of the bracket; the last one standing: 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrm.rm.errors import LimitExceeded
from mmrm.rm.scorer import GroupResult
from mmrm.rm.types import Group, Message, Pair, ResponseLike, ScoreResult, as_response

if TYPE_CHECKING:
    from mmrm.judges.judge import Judge

#: Ridge weight of the Bradley-Terry fit (keeps strengths finite under perfect separation).
BT_RIDGE = 1e-3


def bt_strengths(n: int, outcomes: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Bradley-Terry strengths of ``n`` players from soft outcomes ``(i, j, P(i beats j))``.

    Maximizes sum p log sigma(s_i - s_j) + (1 - p) log sigma(s_j - s_i) - BT_RIDGE * |s|^2 with
    scipy's L-BFGS-B; returns strengths centered to mean 0.
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    ii = np.array([o[0] for o in outcomes], dtype=int)
    jj = np.array([o[1] for o in outcomes], dtype=int)
    pp = np.array([o[2] for o in outcomes], dtype=float)

    def loss(s: np.ndarray) -> tuple[float, np.ndarray]:
        d = s[ii] - s[jj]
        nll = -float(np.sum(pp * log_expit(d) + (1 - pp) * log_expit(-d))) + BT_RIDGE * float(s @ s)
        g_d = expit(d) - pp  # d(nll)/d(d)
        grad = np.zeros(n)
        np.add.at(grad, ii, g_d)
        np.add.at(grad, jj, -g_d)
        return nll, grad + 2 * BT_RIDGE * s

    res = minimize(loss, np.zeros(n), jac=True, method="L-BFGS-B")
    return res.x - res.x.mean()


def _pair_calls(judge: "Judge", n_pairs: int) -> int:
    return judge.backend_calls(n_pairs=n_pairs)


def _refuse(judge: "Judge", strategy: str, calls: int) -> None:
    limit = judge.config.max_queries
    if limit is not None and calls > limit:
        raise LimitExceeded(f"rank_strategy={strategy!r} needs {calls} backend calls for these groups; max_queries is {limit}",
                            field="max_queries", limit=limit)


def _result(judge: "Judge", value: float | None, details: dict[str, Any], invalid: str | None = None,
            kind: str = "invalid_output") -> ScoreResult:
    if value is None:
        return judge._invalid(kind, invalid or "no value", details)
    return ScoreResult(value=value, details=details, provenance=judge.provenance)


def rank_pairwise(judge: "Judge", groups: Sequence[Group], *, references: Sequence[ResponseLike | None] | None = None,
                  eps: float = 1e-6) -> list[GroupResult]:
    """Rank groups by ``judge.config.rank_strategy`` (anchor, bradley_terry, knockout); see the module docstring."""
    strategy = judge.config.rank_strategy
    if references is not None and len(references) != len(groups):
        raise ValueError(f"got {len(references)} references for {len(groups)} groups; give one per group (None for none)")
    refs: list[Message | None] = [None if r is None else as_response(r) for r in (references or [None] * len(groups))]
    if strategy == "anchor":
        return _anchor(judge, groups, refs, eps)
    if any(r is not None for r in refs):
        raise ValueError(f"rank_strategy={strategy!r} uses no reference answers; use 'anchor' to rank against one")
    if strategy == "bradley_terry":
        return _bradley_terry(judge, groups, eps)
    if strategy == "knockout":
        return _knockout(judge, groups, eps)
    raise ValueError(f"unknown rank_strategy {strategy!r}")


def _anchor(judge: "Judge", groups: Sequence[Group], refs: list[Message | None], eps: float) -> list[GroupResult]:
    pairs: list[Pair] = []
    slots: list[list[int | None]] = []  # per group, per response: index into pairs (None: the anchor itself)
    for g, ref in zip(groups, refs):
        row: list[int | None] = []
        if ref is None and not judge.config.anchor < len(g.responses):
            raise ValueError(f"anchor={judge.config.anchor} is outside a group of {len(g.responses)} responses")
        anchor = ref if ref is not None else as_response(g.responses[judge.config.anchor])
        for j, r in enumerate(g.responses):
            if ref is None and j == judge.config.anchor:
                row.append(None)
                continue
            row.append(len(pairs))
            pairs.append(Pair(prompt=g.prompt, response_a=r, response_b=anchor))
        slots.append(row)
    calls = _pair_calls(judge, len(pairs))
    _refuse(judge, "anchor", calls)
    res = judge.compare(pairs) if pairs else []
    out = []
    for g, ref, row in zip(groups, refs, slots):
        base = {"strategy": "anchor", "backend_calls": calls, "anchor": "reference" if ref is not None else judge.config.anchor}
        results = []
        for idx in row:
            if idx is None:
                results.append(_result(judge, 0.5, {**base, "is_anchor": True}))
            else:
                r = res[idx]
                results.append(r if not r.ok else _result(judge, r.value, {**base, "pair": r.details}))
        out.append(GroupResult.of(results, eps=eps))
    return out


def _bradley_terry(judge: "Judge", groups: Sequence[Group], eps: float) -> list[GroupResult]:
    pairs: list[Pair] = []
    index: list[list[tuple[int, int]]] = []
    for g in groups:
        n = len(g.responses)
        ij = [(i, j) for i in range(n) for j in range(i + 1, n)]
        index.append(ij)
        pairs += [Pair(prompt=g.prompt, response_a=g.responses[i], response_b=g.responses[j]) for i, j in ij]
    calls = _pair_calls(judge, len(pairs))
    _refuse(judge, "bradley_terry", calls)
    res = judge.compare(pairs) if pairs else []
    out, k = [], 0
    for g, ij in zip(groups, index):
        n = len(g.responses)
        part = res[k:k + len(ij)]
        k += len(ij)
        outcomes = [(i, j, float(r.value)) for (i, j), r in zip(ij, part) if r.ok and r.value is not None]
        seen = {x for i, j, _ in outcomes for x in (i, j)}
        strengths = bt_strengths(n, outcomes) if outcomes else np.zeros(n)
        base = {"strategy": "bradley_terry", "backend_calls": calls, "pairs": len(ij), "valid_pairs": len(outcomes)}
        failed = {f"{i}-{j}": r.invalid for (i, j), r in zip(ij, part) if not r.ok}
        results = []
        for i in range(n):
            if i in seen or n == 1:
                results.append(_result(judge, float(strengths[i]), {**base, "wins": {f"{a}-{b}": p for a, b, p in outcomes if i in (a, b)}}))
            else:
                results.append(_result(judge, None, {**base, "failed": failed}, f"no valid comparison for response {i}"))
        out.append(GroupResult.of(results, eps=eps))
    return out


def _knockout(judge: "Judge", groups: Sequence[Group], eps: float) -> list[GroupResult]:
    sizes = [len(g.responses) for g in groups]
    calls = _pair_calls(judge, sum(max(0, n - 1) for n in sizes))
    _refuse(judge, "knockout", calls)
    alive = [list(range(n)) for n in sizes]
    wins = [[0] * n for n in sizes]
    lost: list[dict[int, str]] = [{} for _ in sizes]
    matches: list[list[dict[str, Any]]] = [[] for _ in sizes]
    rounds = [max(0, math.ceil(math.log2(n))) if n > 1 else 0 for n in sizes]
    while any(len(a) > 1 for a in alive):
        pairs: list[Pair] = []
        plan: list[tuple[int, int, int]] = []
        nxt: list[list[int]] = [[] for _ in sizes]
        for gi, a in enumerate(alive):
            if len(a) <= 1:
                nxt[gi] = a
                continue
            for m in range(0, len(a) - 1, 2):
                plan.append((gi, a[m], a[m + 1]))
                g = groups[gi]
                pairs.append(Pair(prompt=g.prompt, response_a=g.responses[a[m]], response_b=g.responses[a[m + 1]]))
            if len(a) % 2:
                nxt[gi].append(a[-1])  # a bye
                wins[gi][a[-1]] += 1
        for (gi, x, y), r in zip(plan, judge.compare(pairs)):
            matches[gi].append({"a": x, "b": y, "prob_a_wins": r.value, "invalid": r.invalid})
            if not r.ok or r.value is None:
                lost[gi][x] = lost[gi][y] = f"match {x} vs {y} is invalid: {r.invalid}"
                continue
            win = x if r.value >= 0.5 else y
            wins[gi][win] += 1
            nxt[gi].append(win)
        # Keep bracket order: survivors sorted by their position in the group.
        alive = [sorted(a) for a in nxt]
    for gi, a in enumerate(alive):
        if a:  # the last one standing won the bracket, even when invalid matches ended it early
            wins[gi][a[0]] = rounds[gi]
    out = []
    for gi, n in enumerate(sizes):
        base = {"strategy": "knockout", "backend_calls": calls, "rounds": rounds[gi], "matches": matches[gi]}
        results = []
        for i in range(n):
            if i in lost[gi]:
                results.append(_result(judge, None, base, lost[gi][i]))
            else:
                results.append(_result(judge, wins[gi][i] / rounds[gi] if rounds[gi] else 1.0, {**base, "rounds_won": wins[gi][i]}))
        out.append(GroupResult.of(results, eps=eps))
    return out
