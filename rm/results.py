"""Combining per-response reward results into pair and group results (no torch: the ingress uses it)."""

from __future__ import annotations

import math
import re
from typing import Sequence

from mmrm.rm.normalize import group_normalize
from mmrm.rm.types import ScoreResult


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def pair_result(a: ScoreResult, b: ScoreResult) -> ScoreResult:
    """The pair record from the two sides' reward results: P(A>B) = sigmoid(r_A - r_B)."""
    if a.ok and b.ok:
        prob = sigmoid(a.value - b.value)  # type: ignore[operator]
        return ScoreResult(value=prob, prob_a_wins=prob, provenance=a.provenance,
                           details={"reward_a": a.value, "reward_b": b.value})
    bad, side = (a, "response_a") if not a.ok else (b, "response_b")
    err = bad.error()
    assert err is not None
    out = ScoreResult.failed(err, bad.provenance, prefix=f"{side}: ")
    if out.field:
        # A side's field is relative to its Sample ("[items[i].]response..."): name the Pair's side.
        # A prompt-side field ("prompt[0]...") is the same for both sides and stays as it is.
        out.field = re.sub(r"(^|\.)response(?=[.\[]|$)", lambda m: m.group(1) + side, out.field, count=1)
    return out


def group_result(results: Sequence[ScoreResult], *, eps: float = 1e-6) -> list[float | None]:
    """Group-normalized rewards over the valid results of a group; None where a result is invalid."""
    ok = [r.value for r in results if r.ok]
    norm = iter(group_normalize(ok, eps=eps))  # type: ignore[arg-type]
    return [next(norm) if r.ok else None for r in results]
