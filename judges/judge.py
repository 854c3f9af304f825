"""The judge: a rubric + a backend -> one :class:`~mmrm.rm.types.ScoreResult` per item.

How a score is read (``JudgeOptions.method``; ``auto`` picks the first the backend supports):

1. ``logprobs``: the assistant turn is prefilled with ``<answer>`` and the next-token
   probabilities of the labels are read there (the verdict position). Scale scores are the expected
   value over the labels; pairs use P(A), P(B), P(tie). No sampling noise, no retries (the same input
   gives the same numbers). If the probability mass on the labels is below ``min_label_mass`` the
   result is ``invalid`` (error_kind ``low_label_mass``): the judge was not answering in the format.
2. ``json``: the reply is constrained to a JSON object of the answer schema (server-side structured
   output or the ``hf`` constrained decoder) and parsed strictly.
3. ``text``: the reply is parsed from its leading ``<answer>..</answer>`` slot only.

Paths 2 and 3 retry unreadable output at most ``max_retries`` times, each retry sampling with a new
seed (``seed + attempt``) at ``retry_temperature``; then the item is ``invalid`` (error_kind
``invalid_output``) with the reason. ``max_queries`` caps the backend queries one call may issue
(retries included), so a judge's cost is bounded; items past the cap are ``budget_exhausted``.

Labels must be single tokens after the prefill for the model's tokenizer (checked on first use
through the backend; a scale of 1..10 usually fails because "10" is two tokens).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmrm.judges import prompts
from mmrm.judges.backends.base import GenRequest, JudgeBackend, LabelRequest
from mmrm.judges.parsing import ANSWER_OPEN, AnswerError, AnswerSchema, parse_slot
from mmrm.judges.rubrics import Rubric, checklist_score, combine, load_rubric, scale_normalized
from mmrm.judges.scoring import PAIR_LABELS, debias_pair, expected_value, one_hot, renormalize
from mmrm.rm.errors import ERROR_KINDS, ErrorKind
from mmrm.rm.scorer import GroupResult, rank_pointwise
from mmrm.rm.types import Group, Message, Pair, Provenance, ResponseLike, Sample, ScoreResult, as_response

Method = Literal["auto", "logprobs", "json", "text"]


class JudgeOptions(BaseModel):
    """Settings of a judge that change its scores or bound its cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Parameters that control how the answer is read.
    method: Method = Field(default="auto", description="logprobs, json, text, or auto (first the backend supports).")
    min_label_mass: float = Field(default=0.5, ge=0.0, le=1.0, description="Least probability on the labels at the verdict position (logprobs path).")
    # Parameters that control generation (json and text paths).
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Temperature of the first attempt (0: greedy).")
    retry_temperature: float = Field(default=0.7, gt=0.0, le=2.0, description="Temperature of retries (they need a different sample).")
    seed: int = Field(default=0, description="Seed of the first attempt; retry k uses seed + k.")
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries of unreadable output before the item is invalid.")
    max_answer_tokens: int = Field(default=16, ge=4, le=4096, description="Token cap of an answer-slot reply.")
    max_json_tokens: int = Field(default=128, ge=8, le=8192, description="Token cap of a JSON reply.")
    # Parameters that bound cost.
    max_queries: int | None = Field(default=None, ge=1, description="Most backend queries per score()/compare() call, retries included.")
    name: str | None = Field(default=None, description="Scorer id in provenance (default: rubric@model).")


@dataclass
class _Unit:
    """One backend query: its prompt, how to read it, and (after running) what was read."""

    item: int
    key: str
    messages: list[Message]
    labels: tuple[str, ...]
    field: str
    schema: AnswerSchema | None = None
    dists: dict[str, dict[str, float]] | None = None
    mass: float | None = None
    top_k: int | None = None
    error_kind: str | None = None
    reason: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _ref(value: ResponseLike | None) -> Message | None:
    return None if value is None else as_response(value)


class Judge:
    """A generative judge: pointwise (scale), checklist, pairwise (both orders), reference-guided.

    A :class:`~mmrm.rm.scorer.Scorer`: :meth:`score` (samples), :meth:`compare` (pairs, both orders,
    debiased) and :meth:`rank` (groups: a pointwise score per response, normalized per group), one
    result per item in order; a failed item is its own invalid result.

    Example:
        >>> judge = Judge("helpfulness", HFJudgeBackend(path))          # doctest: +SKIP
        >>> judge.score([Sample(prompt="Hi", response="Hello!")])[0].value  # doctest: +SKIP
    """

    def __init__(self, rubric: Rubric | str, backend: JudgeBackend, config: JudgeOptions | None = None) -> None:
        self.rubric = rubric if isinstance(rubric, Rubric) else load_rubric(rubric)
        self.backend = backend
        self.config = config or JudgeOptions()
        self.method: Literal["logprobs", "json", "text"] = self._resolve_method()
        self._checked: set[tuple[str, ...]] = set()
        self.fingerprint = self._fingerprint()

    def _resolve_method(self) -> Literal["logprobs", "json", "text"]:
        m = self.config.method
        if m == "auto":
            if self.backend.supports_logprobs:
                return "logprobs"
            return "json" if self.backend.supports_json_schema else "text"
        if m == "logprobs" and not self.backend.supports_logprobs:
            from mmrm.rm.errors import ConfigError

            raise ConfigError("this backend returns no logprobs", field="method", limit=["json", "text"])
        if m == "json" and not self.backend.supports_json_schema:
            from mmrm.rm.errors import ConfigError

            raise ConfigError("this backend has no schema-constrained output", field="method", limit=["logprobs", "text"])
        return m

    def _fingerprint(self) -> str:
        blob = json.dumps(
            {
                "rubric": self.rubric.fingerprint(),
                "backend": self.backend.config_fingerprint(),
                "prompt_template": prompts.PROMPT_TEMPLATE_VERSION,
                "config": self.config.model_dump(mode="json", exclude={"name", "max_queries"}),
                "method": self.method,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def provenance(self) -> Provenance:

        return Provenance(
            scorer=self.config.name or f"{self.rubric.name}@{self.backend.scorer_id}",
            kind="judge",
            fingerprint=self.fingerprint,
            engine=self.backend.engine,
            dtype=self.backend.dtype,
        )

    # ----------------------------------------------------------------------------------------------
    # Public API

    def score(self, samples: Sequence[Sample], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Pointwise/checklist scores in [0, 1], one result per sample (failed items are ``invalid``)."""
        refs = self._refs(len(samples), references)
        units: list[_Unit] = []
        early: dict[int, ScoreResult] = {}
        for i, s in enumerate(samples):
            if self.rubric.requires_reference and refs[i] is None:
                early[i] = self._invalid("invalid_input", f"rubric {self.rubric.name!r} is reference-guided; give a reference answer")
                continue
            units += self._sample_units(i, s, refs[i])
        self._run(units)
        by_item: dict[int, list[_Unit]] = {}
        for u in units:
            by_item.setdefault(u.item, []).append(u)
        return [early[i] if i in early else self._finish_sample(by_item.get(i, [])) for i in range(len(samples))]

    def rank(self, groups: Sequence[Group], *, references: Sequence[ResponseLike | None] | None = None,
             eps: float = 1e-6) -> list[GroupResult]:
        """A pointwise score per response of every group (one batched call), normalized per group
        like reward groups (:class:`~mmrm.rm.scorer.GroupResult`); ``references``: one per group.
        An invalid response is left out of its group's normalization."""
        return rank_pointwise(self.score, groups, references=references, eps=eps)

    def compare(self, pairs: Sequence[Pair], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Pairwise, both orders: value = debiased P(A>B) (see :mod:`mmrm.judges.scoring`)."""
        refs = self._refs(len(pairs), references)
        units: list[_Unit] = []
        early: dict[int, ScoreResult] = {}
        schema = AnswerSchema.single("verdict", PAIR_LABELS) if self.method == "json" else None
        for i, p in enumerate(pairs):
            if self.rubric.requires_reference and refs[i] is None:
                early[i] = self._invalid("invalid_input", f"rubric {self.rubric.name!r} is reference-guided; give a reference answer")
                continue
            for key, first, second in (("AB", p.response_a, p.response_b), ("BA", p.response_b, p.response_a)):
                msgs = prompts.pairwise_query(self.rubric, p.prompt, first, second, refs[i], schema)
                units.append(_Unit(i, key, msgs, PAIR_LABELS, "verdict", schema))
        self._run(units)
        by_item: dict[int, dict[str, _Unit]] = {}
        for u in units:
            by_item.setdefault(u.item, {})[u.key] = u
        return [early[i] if i in early else self._finish_pair(by_item[i]) for i in range(len(pairs))]

    # ----------------------------------------------------------------------------------------------
    def _refs(self, n: int, references: Sequence[ResponseLike | None] | None) -> list[Message | None]:
        if references is None:
            return [None] * n
        if len(references) != n:
            raise ValueError(f"got {len(references)} references for {n} items; give one per item (None for none)")
        return [_ref(r) for r in references]

    def _sample_units(self, i: int, s: Sample, ref: Message | None) -> list[_Unit]:
        units = []
        for dim in self.rubric.dimensions:
            if dim.scale is not None:
                labels = tuple(dim.scale.labels)
                schema = AnswerSchema.single("score", labels) if self.method == "json" else None
                msgs = prompts.scale_query(self.rubric, dim, s.prompt, s.response, ref, schema)
                units.append(_Unit(i, dim.name, msgs, labels, "score", schema))
            elif self.method == "json":
                from mmrm.judges.parsing import AnswerField

                assert dim.items is not None
                schema = AnswerSchema(tuple(AnswerField(it.id, tuple(it.labels), it.kind == "graded") for it in dim.items))
                msgs = prompts.checklist_query(self.rubric, dim, s.prompt, s.response, ref, schema)
                units.append(_Unit(i, dim.name, msgs, (), "", schema))
            else:
                assert dim.items is not None
                for it in dim.items:
                    msgs = prompts.item_query(self.rubric, dim, it, s.prompt, s.response, ref)
                    units.append(_Unit(i, f"{dim.name}.{it.id}", msgs, tuple(it.labels), it.id))
        return units

    def _check(self, labels: tuple[str, ...]) -> None:
        if labels and labels not in self._checked:
            self.backend.check_labels(ANSWER_OPEN, labels)
            self._checked.add(labels)

    def _run(self, units: list[_Unit]) -> None:
        """Query the backend for every unit in as few batched calls as possible; fill results in."""
        if self.method in ("logprobs", "text"):
            for u in units:
                self._check(u.labels)
        budget = self.config.max_queries
        used = 0

        def admit(pending: list[_Unit]) -> list[_Unit]:
            nonlocal used
            if budget is None:
                used += len(pending)
                return pending
            room = max(0, budget - used)
            for u in pending[room:]:
                before = f" (last attempt: {u.reason})" if u.reason else ""
                u.error_kind, u.reason = "budget_exhausted", f"query budget max_queries={budget} used up{before}"
            used += min(room, len(pending))
            return pending[:room]

        if self.method == "logprobs":
            todo = admit(units)
            replies = self.backend.label_probs([LabelRequest(u.messages, ANSWER_OPEN, u.labels) for u in todo])
            for u, r in zip(todo, replies):
                u.attempts = 1
                if r.error is not None or r.probs is None:
                    u.error_kind, u.reason = (r.error.kind if r.error else "backend_error"), str(r.error)
                    continue
                dist, mass = renormalize(r.probs)
                u.mass, u.top_k = mass, r.top_k
                if mass <= 0.0 or mass < self.config.min_label_mass:
                    seen = "full vocabulary" if r.top_k is None else f"top {r.top_k} tokens"
                    u.error_kind = "low_label_mass"
                    u.reason = (f"probability on the labels {mass:.4g} is below min_label_mass {self.config.min_label_mass} "
                                f"(or zero) in the {seen} at the verdict position")
                    u.extra["probs"] = r.probs
                    continue
                u.dists = {u.field: dist}
            return

        pending = list(units)
        for attempt in range(self.config.max_retries + 1):
            pending = admit(pending)
            if not pending:
                break
            temp = self.config.temperature if attempt == 0 else max(self.config.temperature, self.config.retry_temperature)
            reqs = []
            for u in pending:
                if self.method == "json":
                    reqs.append(GenRequest(u.messages, "", u.schema, self.config.max_json_tokens, temp, self.config.seed + attempt))
                else:
                    prefill = ANSWER_OPEN if self.backend.supports_prefill else ""
                    reqs.append(GenRequest(u.messages, prefill, None, self.config.max_answer_tokens, temp, self.config.seed + attempt))
            replies = self.backend.generate(reqs)
            retry = []
            for u, req, r in zip(pending, reqs, replies):
                u.attempts += 1
                if r.error is not None or r.text is None:
                    # Transport retries live in the backend; a backend error is final for the item.
                    u.error_kind, u.reason = (r.error.kind if r.error else "backend_error"), str(r.error)
                    continue
                try:
                    if u.schema is not None:
                        got = u.schema.parse(r.text)
                        u.dists = {f.name: one_hot(f.labels, got[f.name]) for f in u.schema.fields}
                    else:
                        lab = parse_slot(r.text, u.labels, prefilled=bool(req.prefill))
                        u.dists = {u.field: one_hot(u.labels, lab)}
                    u.error_kind = u.reason = None
                    u.extra["reply"] = r.text[:200]
                except AnswerError as e:
                    u.error_kind = "invalid_output"
                    u.reason = f"{e.reason} (finish_reason={r.finish_reason}, attempt {u.attempts})"
                    u.extra["reply"] = r.text[:200]
                    retry.append(u)
            pending = retry

    # ----------------------------------------------------------------------------------------------
    def _invalid(self, kind: str, reason: str, details: dict[str, Any] | None = None) -> ScoreResult:
        # A backend's own kind outside the shared vocabulary (a remote server's "http_502") is a service error.
        known: ErrorKind = kind if kind in ERROR_KINDS else "service_error"  # type: ignore[assignment]
        return ScoreResult(value=None, invalid=reason, error_kind=known, details=details or {"method": self.method},
                           provenance=self.provenance)

    def _unit_errors(self, units: list[_Unit]) -> ScoreResult | None:
        bad = [u for u in units if u.error_kind is not None]
        if not bad:
            return None
        reason = "; ".join(f"{u.key}: {u.reason}" for u in bad)
        details = {"method": self.method, "failed": {u.key: {"kind": u.error_kind, "reason": u.reason, **u.extra} for u in bad}}
        return self._invalid(bad[0].error_kind or "invalid_output", reason, details)

    def _finish_sample(self, units: list[_Unit]) -> ScoreResult:
        failed = self._unit_errors(units)
        if failed is not None:
            return failed
        dists: dict[str, dict[str, float]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for u in units:
            assert u.dists is not None
            dists.update({f"{u.key.split('.')[0]}.{f}": d for f, d in u.dists.items()})
            meta[u.key] = {"attempts": u.attempts, "label_mass": u.mass, "top_k": u.top_k, **u.extra}
        dim_scores: dict[str, float] = {}
        dim_details: dict[str, Any] = {}
        for dim in self.rubric.dimensions:
            if dim.scale is not None:
                dist = dists[f"{dim.name}.score"]
                ev = expected_value(dist)
                dim_scores[dim.name] = scale_normalized(dim.scale, ev)
                dim_details[dim.name] = {"kind": "scale", "score": dim_scores[dim.name], "expected": ev, "probs": dist}
            else:
                assert dim.items is not None
                item_scores: dict[str, float] = {}
                for it in dim.items:
                    d = dists[f"{dim.name}.{it.id}"]
                    item_scores[it.id] = d["yes"] if it.kind == "binary" else expected_value(d) / it.max_grade
                dim_scores[dim.name] = checklist_score(dim.items, item_scores)
                dim_details[dim.name] = {"kind": "checklist", "score": dim_scores[dim.name], "items": item_scores}
        value = combine(dim_scores, {d.name: d.weight for d in self.rubric.dimensions}, self.rubric.combiner)
        details = {"method": self.method, "combiner": self.rubric.combiner, "dimensions": dim_details, "queries": meta}
        return ScoreResult(value=value, details=details, provenance=self.provenance)

    def _finish_pair(self, units: dict[str, _Unit]) -> ScoreResult:
        failed = self._unit_errors(list(units.values()))
        if failed is not None:
            return failed
        ab, ba = units["AB"], units["BA"]
        assert ab.dists is not None and ba.dists is not None
        deb = debias_pair(ab.dists["verdict"], ba.dists["verdict"])
        p = float(deb["prob_a_wins"])  # type: ignore[arg-type]
        for entry, u in zip(deb["per_order"], (ab, ba)):  # type: ignore[call-overload]
            entry.update(attempts=u.attempts, label_mass=u.mass, top_k=u.top_k, **u.extra)
        return ScoreResult(value=p, prob_a_wins=p, details={"method": self.method, **deb}, provenance=self.provenance)
