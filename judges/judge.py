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

A judge built on a :class:`~mmrm.judges.presets.Preset` (a published generative reward model:
R1-Reward, UnifiedReward, LLaVA-Critic, or a user's YAML) instead uses the preset's own prompt and
answer format, thinks first where the preset reasons, and reads the verdict as
:mod:`mmrm.judges.reasoning` describes (its labels are checked when the judge is built).

:meth:`Judge.rank` ranks a group by ``JudgeOptions.rank_strategy`` (:mod:`mmrm.judges.ranking`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmrm.judges import prompts
from mmrm.judges.backends.base import GenRequest, JudgeBackend, LabelRequest
from mmrm.judges.parsing import ANSWER_OPEN, AnswerError, AnswerSchema, parse_slot
from mmrm.judges.presets import Preset, is_preset_file, list_presets, load_preset
from mmrm.judges.reasoning import PresetRunner, Query, build_query
from mmrm.judges.rubrics import Rubric, checklist_score, combine, list_rubrics, load_rubric, scale_normalized
from mmrm.judges.scoring import PAIR_LABELS, debias_pair, expected_value, one_hot, renormalize
from mmrm.rm.errors import ERROR_KINDS, ConfigError, ErrorKind
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
    # Parameters of reasoning presets (mmrm.judges.presets; ignored by rubric judges).
    reasoning_tokens: int = Field(default=1024, ge=1, le=32768, description="Token budget of the reasoning a preset's judge writes "
                                  "before its verdict (generation stops at the answer tag); text path: of the whole reply.")
    samples: int = Field(default=1, ge=1, le=64, description="Self-consistency: judgments sampled per query (seeds seed..seed+k-1), "
                         "aggregated as the mean probability and the vote.")
    sample_temperature: float = Field(default=1.0, gt=0.0, le=2.0, description="Temperature of the samples when samples > 1.")
    preset_fallback: str | None = Field(default=None, description="Name of the preset's parse-failure fallback to apply "
                                        "(the authors' behaviour); None: an unparseable reply is invalid.")
    max_reasoning_chars: int = Field(default=2000, ge=0, le=100_000, description="Longest reasoning text kept in details (its tail).")
    # Parameters of ranking a group (rank()).
    rank_strategy: Literal["pointwise", "anchor", "bradley_terry", "knockout"] = Field(
        default="pointwise", description="pointwise scores; anchor: each response against the group's reference (else "
        "response `anchor`); bradley_terry: all pairs both orders, fitted strengths; knockout: a single-elimination bracket.")
    anchor: int = Field(default=0, ge=0, description="The anchor response of a group under rank_strategy='anchor' without a reference.")
    # Parameters that bound cost.
    max_queries: int | None = Field(default=None, ge=1, description="Most backend queries per score()/compare()/rank() call, "
                                    "retries included (rank: a request above it is refused with its count).")
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


def load_spec(ref: "Rubric | Preset | str | Path") -> "Rubric | Preset":
    """A rubric or a preset: shipped by name (rubrics first), or a user's YAML/JSON file (``kind: preset``
    marks a preset file)."""
    if isinstance(ref, (Rubric, Preset)):
        return ref
    p = Path(ref)
    if p.suffix:
        return load_preset(p) if is_preset_file(p) else load_rubric(p)
    if str(ref) in list_rubrics():
        return load_rubric(str(ref))
    if str(ref) in list_presets():
        return load_preset(str(ref))
    raise ConfigError(f"no shipped rubric or preset named {ref!r}", field="rubric", limit=list_rubrics() + list_presets())


class Judge:
    """A generative judge: pointwise (scale), checklist, pairwise (both orders), reference-guided.

    A :class:`~mmrm.rm.scorer.Scorer`: :meth:`score` (samples), :meth:`compare` (pairs, both orders,
    debiased) and :meth:`rank` (groups: a pointwise score per response, normalized per group), one
    result per item in order; a failed item is its own invalid result.

    Example:
        >>> judge = Judge("helpfulness", HFJudgeBackend(path))          # doctest: +SKIP
        >>> judge.score([Sample(prompt="Hi", response="Hello!")])[0].value  # doctest: +SKIP
    """

    def __init__(self, rubric: Rubric | Preset | str | Path, backend: JudgeBackend, config: JudgeOptions | None = None,
                 *, check_labels: bool = True) -> None:
        """``rubric``: a rubric or a preset (object, shipped name, or file path). ``check_labels=False``
        skips a preset's start-up label check (for a server that already checked it once)."""
        spec = load_spec(rubric)
        self.backend = backend
        self.config = config or JudgeOptions()
        self.preset: Preset | None = spec if isinstance(spec, Preset) else None
        self.runner: PresetRunner | None = None
        if self.preset is not None:
            self.runner = PresetRunner(self.preset, backend, self.config)
            if check_labels:  # at start-up: a preset whose labels are not single tokens is refused here
                self.runner.check_labels()
            self.rubric: Rubric = None  # type: ignore[assignment]  # a preset judge has no rubric
            self.method: Literal["logprobs", "json", "text"] = "logprobs" if self.runner.path == "probability" else "text"
        else:
            assert isinstance(spec, Rubric)
            self.rubric = spec
            self.method = self._resolve_method()
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
        # Settings that cannot change this judge's values stay out, so a rubric judge keeps the
        # fingerprint it had before presets and rank strategies existed.
        exclude = {"name", "max_queries", "max_reasoning_chars"}
        if self.preset is None:
            exclude |= {"reasoning_tokens", "samples", "sample_temperature", "preset_fallback"}
        if self.config.rank_strategy == "pointwise":
            exclude |= {"rank_strategy", "anchor"}
        spec = {"rubric": self.rubric.fingerprint()} if self.preset is None else {"preset": self.preset.fingerprint()}
        blob = json.dumps(
            {
                **spec,
                "backend": self.backend.config_fingerprint(),
                "prompt_template": prompts.PROMPT_TEMPLATE_VERSION,
                "config": self.config.model_dump(mode="json", exclude=exclude),
                "method": self.method,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def spec_name(self) -> str:
        """The name of the judge's rubric or preset."""
        return self.preset.name if self.preset is not None else self.rubric.name

    @property
    def provenance(self) -> Provenance:

        return Provenance(
            scorer=self.config.name or f"{self.spec_name}@{self.backend.scorer_id}",
            kind="judge",
            fingerprint=self.fingerprint,
            engine=self.backend.engine,
            dtype=self.backend.dtype,
        )

    # ----------------------------------------------------------------------------------------------
    # Public API

    def score(self, samples: Sequence[Sample], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Pointwise/checklist scores in [0, 1], one result per sample (failed items are ``invalid``)."""
        if self.preset is not None:
            return self._preset_score(samples, references)
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
        """Rank each group's responses by ``JudgeOptions.rank_strategy`` (:mod:`mmrm.judges.ranking`),
        normalized per group like reward groups (:class:`~mmrm.rm.scorer.GroupResult`); ``references``:
        one per group. ``pointwise`` (the default) scores every response in one batched call; an
        invalid response is left out of its group's normalization."""
        if self.config.rank_strategy == "pointwise":
            return rank_pointwise(self.score, groups, references=references, eps=eps)
        from mmrm.judges.ranking import rank_pairwise

        return rank_pairwise(self, groups, references=references, eps=eps)

    def compare(self, pairs: Sequence[Pair], *, references: Sequence[ResponseLike | None] | None = None) -> list[ScoreResult]:
        """Pairwise, both orders: value = debiased P(A>B) (see :mod:`mmrm.judges.scoring`)."""
        if self.preset is not None:
            return self._preset_compare(pairs, references)
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
    # Preset judges (mmrm.judges.reasoning)

    def backend_calls(self, n_pairs: int = 0, n_samples: int = 0) -> int:
        """Backend calls (first attempts) that judging ``n_pairs`` pairs (both orders) and ``n_samples``
        samples costs: what :meth:`rank` states and checks against ``max_queries``."""
        if self.runner is not None:
            return self.runner.calls_for(2 * n_pairs + n_samples)
        assert self.rubric is not None
        per_sample = sum(1 if d.scale is not None or self.method == "json" else len(d.items or []) for d in self.rubric.dimensions)
        return 2 * n_pairs + per_sample * n_samples

    def _preset_mode(self, want: str, refs: Sequence[ResponseLike | None] | None) -> PresetRunner:
        assert self.preset is not None and self.runner is not None
        if self.preset.mode != want:
            use = ("compare(), or rank() with rank_strategy 'anchor', 'bradley_terry' or 'knockout'"
                   if self.preset.mode == "pairwise" else "score()")
            raise ConfigError(f"preset {self.preset.name!r} is {self.preset.mode}; use {use}", field="preset", limit=self.preset.mode)
        if refs is not None and any(r is not None for r in refs):
            raise ConfigError(f"preset {self.preset.name!r} takes no reference answers", field="references")
        return self.runner

    def _preset_details(self) -> dict[str, Any]:
        assert self.runner is not None and self.preset is not None
        d: dict[str, Any] = {"method": self.method, "preset": self.preset.name, "path": self.runner.path,
                             "probability": self.runner.path == "probability", "samples": self.config.samples}
        if self.runner.path == "text":
            why = ("the preset has no single-token answer slot" if self.preset.slot is None else
                   "the backend cannot continue a prefilled turn with logprobs" if self.config.method != "text" else "method='text'")
            d["probability_note"] = f"verdict parsed from the reply text ({why}); no probability is claimed"
        return d

    def _preset_invalid(self, agg: dict[str, Any], key: str, extra: dict[str, Any]) -> ScoreResult:
        kind, reason = agg["error"]
        return self._invalid(kind or "invalid_output", f"{key}: {reason}", {**self._preset_details(), **extra})

    def _preset_score(self, samples: Sequence[Sample], references: Sequence[ResponseLike | None] | None) -> list[ScoreResult]:
        runner = self._preset_mode("pointwise", references)
        assert self.preset is not None
        queries = [Query(i, "score", build_query(self.preset, list(s.prompt), [s.response])) for i, s in enumerate(samples)]
        runner.run(queries, self.config.max_queries)
        out = []
        for q in queries:
            agg = runner.aggregate(q)
            if "error" in agg:
                out.append(self._preset_invalid(agg, "score", {"samples_detail": agg["samples"]}))
                continue
            value, extra = runner.point_value(agg)
            details = {**self._preset_details(), **extra, "agreement": agg["agreement"], "samples_detail": agg["samples"]}
            out.append(ScoreResult(value=value, details=details, provenance=self.provenance))
        return out

    def _preset_compare(self, pairs: Sequence[Pair], references: Sequence[ResponseLike | None] | None) -> list[ScoreResult]:
        runner = self._preset_mode("pairwise", references)
        assert self.preset is not None
        queries = []
        for i, p in enumerate(pairs):
            for key, first, second in (("AB", p.response_a, p.response_b), ("BA", p.response_b, p.response_a)):
                queries.append(Query(i, key, build_query(self.preset, list(p.prompt), [first, second])))
        runner.run(queries, self.config.max_queries)
        out = []
        for k in range(len(pairs)):
            ab, ba = runner.aggregate(queries[2 * k]), runner.aggregate(queries[2 * k + 1])
            orders = {"AB": ab, "BA": ba}
            bad = [(key, agg) for key, agg in orders.items() if "error" in agg]
            if bad:
                out.append(self._preset_invalid(bad[0][1], bad[0][0], {"orders": orders}))
                continue
            deb = runner.pair_value(ab, ba)
            for entry, agg in zip(deb["per_order"], (ab, ba)):  # type: ignore[call-overload]
                vote = agg["vote"]
                entry.update(vote={"first": "A", "second": "B", "tie": "tie"}[vote] if entry["order"] == "AB"
                             else {"first": "B", "second": "A", "tie": "tie"}[vote],
                             agreement=agg["agreement"], valid_samples=agg["valid_samples"], samples=agg["samples"])
            p_a = float(deb["prob_a_wins"])  # type: ignore[arg-type]
            details = {**self._preset_details(), **deb}
            prob = p_a if runner.path == "probability" else None
            out.append(ScoreResult(value=p_a, prob_a_wins=prob, details=details, provenance=self.provenance))
        return out

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
