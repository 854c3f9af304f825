"""The one scoring contract of mmrm: :class:`Scorer`.

Every scorer (the reward model on either engine, a judge, a panel of judges, a model or judge
served over HTTP through :class:`~mmrm.client.RemoteScorer`) has the same three operations,
named the same everywhere, each returning one result per input item in input order:

* :meth:`Scorer.score` — samples (prompt + one response) -> one :class:`~mmrm.rm.types.ScoreResult` each;
* :meth:`Scorer.compare` — pairs -> one result each, ``value`` = P(A > B);
* :meth:`Scorer.rank` — groups (prompt + N responses, a GRPO group) -> one :class:`GroupResult` each:
  a result per response plus the group-normalized values of the valid ones.

A failed item is that item's invalid result (``invalid``, ``error_kind``, ``field``, ``limit``), never
an exception and never a failed batch; an exception means the call as a whole failed (a service
that cannot be reached, a request the service refuses). ``references`` (one reference answer per
item, or None) is read by reference-guided judges; reward models accept and ignore it, so any
scorer can be called the same way. ``provenance`` says which scorer it is.

This module is light (pydantic and numpy: no torch, no Ray), so RL loops and clients can type against it.

>>> from mmrm.rm.scorer import GroupResult, Scorer
>>> from mmrm.rm.types import Provenance, ScoreResult
>>> p = Provenance(scorer="x", kind="reward_model", fingerprint="f", mmrm_version="0", engine="hf")
>>> g = GroupResult.of([ScoreResult(value=1.0, provenance=p), ScoreResult(value=3.0, provenance=p)])
>>> g.values, [round(v, 3) for v in g.normalized]
([1.0, 3.0], [-1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from mmrm.rm.results import group_result
from mmrm.rm.types import Group, Pair, Provenance, ResponseLike, Sample, ScoreResult

__all__ = ["GroupResult", "Groups", "Pairs", "References", "Samples", "Scorer", "rank_pointwise"]

#: Inputs of the three operations.
Samples = Sequence[Sample]
Pairs = Sequence[Pair]
Groups = Sequence[Group]
#: One reference answer per item (None for an item without one), or None for no references at all.
References = Sequence[ResponseLike | None] | None


class GroupResult(BaseModel):
    """One group's results: a result per response (in order) and the group-normalized values of the
    valid ones (None for an invalid response). The wire's ``/v1/rank`` record has the same fields."""

    results: list[ScoreResult] = Field(description="One result per response, in order.")
    normalized: list[float | None] = Field(description="Group-normalized values of the valid results; null for invalid ones.")

    @classmethod
    def of(cls, results: Sequence[ScoreResult], *, eps: float = 1e-6) -> "GroupResult":
        """The group record of ``results``: ``(v - mean) / (std + eps)`` over the valid ones
        (:func:`~mmrm.rm.normalize.group_normalize`, the formula the service uses too)."""
        return cls(results=list(results), normalized=group_result(results, eps=eps))

    @property
    def values(self) -> list[float | None]:
        """The raw value of each response (None where invalid)."""
        return [r.value for r in self.results]

    @property
    def ok(self) -> bool:
        """True when every response has a value."""
        return all(r.ok for r in self.results)


def rank_pointwise(score: Callable[..., list[ScoreResult]], groups: Groups, *, references: References = None,
                   eps: float = 1e-6) -> list[GroupResult]:
    """``rank`` from a pointwise ``score``: every response of every group scored in ONE call, then
    normalized per group (how judges and panels rank). ``references``: one per group."""
    if references is not None and len(references) != len(groups):
        raise ValueError(f"got {len(references)} references for {len(groups)} groups; give one per group (None for none)")
    flat = [s for g in groups for s in g.samples()]
    refs = None if references is None else [r for g, r in zip(groups, references) for _ in g.responses]
    res = score(flat, references=refs)
    out, k = [], 0
    for g in groups:
        out.append(GroupResult.of(res[k:k + len(g.responses)], eps=eps))
        k += len(g.responses)
    return out


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores samples, pairs and groups (see the module docstring for the contract)."""

    @property
    def provenance(self) -> Provenance:
        """Which scorer this is (name, kind, fingerprint, engine, dtype)."""
        ...

    def score(self, samples: Samples, *, references: References = None) -> list[ScoreResult]:
        """One result per sample, in order: a reward (reward model) or a score (judge)."""
        ...

    def compare(self, pairs: Pairs, *, references: References = None) -> list[ScoreResult]:
        """One result per pair, in order: ``value`` = ``prob_a_wins`` = P(A > B)."""
        ...

    def rank(self, groups: Groups, *, references: References = None) -> list[GroupResult]:
        """One :class:`GroupResult` per group, in order (``references``: one per group)."""
        ...
