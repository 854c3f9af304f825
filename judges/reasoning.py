"""Preset judges: think first, then the verdict, read from token probabilities where the backend allows.

One judgment of a :class:`~mmrm.judges.presets.Preset` is one *query* (a pair in one order, or a
sample), run ``JudgeOptions.samples`` times. How a query is read (``details.path``):

* ``probability`` (the preset has a ``slot``, the backend continues a prefilled assistant turn and
  returns logprobs): for a reasoning preset the backend first generates the reasoning, at most
  ``reasoning_tokens`` tokens, stopping at ``slot.open``; then the verdict distribution is read at
  ``reasoning + slot.open + slot.prefix`` (one :class:`~mmrm.judges.backends.base.LabelRequest`).
  Without reasoning only the read runs. Two backend calls per reasoning query, one otherwise.
* ``text``: the whole reply is generated (``reasoning_tokens`` budget) and read by the preset's
  strict parser; the verdict is one-hot and ``details.probability`` is false: no probability is
  claimed. One backend call.

Nothing is ever made up: a reasoning that uses the whole budget is ``budget_exhausted``; one that
ends without the answer tag, or opens it inside the reasoning (before ``slot.after``), or a reply
the parser cannot read, is ``invalid_output`` with the reason, unless the judge names one of the
preset's fallbacks (``preset_fallback``), and then ``details.fallback`` says it was used.

Self-consistency (``samples`` = k > 1): sample j uses seed ``seed + j`` at ``sample_temperature``;
a query's distribution is the mean over its valid samples, its vote the most frequent per-sample
verdict (first in label order on ties), and ``agreement`` the fraction of valid samples that voted
with it. Pairs are then debiased over both orders as every judge's pairs are
(:func:`~mmrm.judges.scoring.debias_pair`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from mmrm.judges.backends.base import GenRequest, JudgeBackend, LabelRequest
from mmrm.judges.parsing import AnswerError, apply_rule, field_score, pair_verdict
from mmrm.judges.presets import Fallback, Preset
from mmrm.judges.scoring import debias_pair, expected_value, renormalize
from mmrm.rm.types import ImagePart, Message, TextPart, VideoPart

Path = Literal["probability", "text"]
#: A pairwise distribution over what the judge saw: the response shown first, second, or a tie.
SIDES = ("first", "second", "tie")


def _texts_and_media(messages: list[Message]) -> tuple[str, list[Any]]:
    """All text of ``messages`` (turns joined by blank lines) and their media parts, in order."""
    texts, media = [], []
    for m in messages:
        if isinstance(m.content, str):
            texts.append(m.content)
            continue
        chunk = []
        for p in m.content:
            if isinstance(p, TextPart):
                chunk.append(p.text)
            elif isinstance(p, (ImagePart, VideoPart)):
                media.append(p)
        texts.append("".join(chunk))
    return "\n\n".join(t for t in texts if t), media


def build_query(preset: Preset, prompt: list[Message], responses: list[Message]) -> list[Message]:
    """The preset's conversation: optional system message, one user message of media + filled template.

    The question is the prompt's text; responses are their text (pairwise: ``answer1``, ``answer2``
    in the order shown). Media of the prompt, then of the responses, go before or after the text
    (``image_placement``). Texts are inserted as they are, as the authors' scripts do.
    """
    question, media = _texts_and_media(prompt)
    fields: dict[str, str] = {"question": question}
    names = ["answer1", "answer2"] if preset.mode == "pairwise" else ["response"]
    for name, r in zip(names, responses):
        text, more = _texts_and_media([r])
        fields[name] = text
        media += more
    text = TextPart(text=preset.template.format(**fields))
    parts: list[Any] = [*media, text] if preset.image_placement == "before_text" else [text, *media]
    out = [Message(role="system", content=preset.system)] if preset.system else []
    return out + [Message(role="user", content=parts)]


@dataclass
class Query:
    """One judgment of one item (one order of a pair): its prompt and its k samples once run."""

    item: int
    key: str
    messages: list[Message]
    samples: list["Sample"] = field(default_factory=list)


@dataclass
class Sample:
    """One sampled judgment: a distribution over labels (or sides) or an error."""

    seed: int
    dist: dict[str, float] | None = None
    scores: dict[str, float] | None = None
    reasoning: str | None = None
    reply: str | None = None
    mass: float | None = None
    fallback: str | None = None
    error_kind: str | None = None
    reason: str | None = None
    calls: int = 0


class PresetRunner:
    """Runs a preset's queries on a backend (batched: every query's step in one backend call)."""

    def __init__(self, preset: Preset, backend: JudgeBackend, config: Any) -> None:
        self.preset, self.backend, self.config = preset, backend, config
        self.path: Path = self._path()
        self._fallback: Fallback | None = preset.fallback(config.preset_fallback) if config.preset_fallback else None

    def _path(self) -> Path:
        method = self.config.method
        can = self.preset.slot is not None and self.backend.supports_logprobs and self.backend.supports_prefill
        if method == "json":
            from mmrm.rm.errors import ConfigError

            raise ConfigError("a preset judge reads its preset's own answer format, not JSON", field="method",
                              limit=["auto", "logprobs", "text"])
        if method == "logprobs" and not can:
            from mmrm.rm.errors import ConfigError

            why = "the preset has no answer slot" if self.preset.slot is None else "the backend cannot continue a prefilled turn with logprobs"
            raise ConfigError(f"no probability path for preset {self.preset.name!r}: {why}", field="method", limit=["text"])
        return "probability" if can and method != "text" else "text"

    def check_labels(self) -> None:
        """Each slot label must be one token after the slot's opening text (the start-up check)."""
        if self.path == "probability":
            assert self.preset.slot is not None
            self.backend.check_labels(self.preset.slot.open + self.preset.slot.prefix, tuple(self.preset.slot.labels))

    @property
    def calls_per_sample(self) -> int:
        """Backend calls one sample costs (generation and/or the verdict read)."""
        return 2 if self.path == "probability" and self.preset.think else 1

    def calls_for(self, n_queries: int) -> int:
        """Backend calls ``n_queries`` queries cost, all samples included."""
        return n_queries * self.config.samples * self.calls_per_sample

    # ----------------------------------------------------------------------------------------------
    def run(self, queries: list[Query], budget: int | None) -> None:
        """Fill every query's samples; samples past ``budget`` backend calls are ``budget_exhausted``."""
        k, c = self.config.samples, self.config
        temp = c.sample_temperature if k > 1 else c.temperature
        todo: list[Sample] = []
        used = 0
        for q in queries:
            q.samples = [Sample(seed=c.seed + j) for j in range(k)]
            for s in q.samples:
                if budget is not None and used + self.calls_per_sample > budget:
                    s.error_kind, s.reason = "budget_exhausted", f"query budget max_queries={budget} used up"
                    continue
                used += self.calls_per_sample
                todo.append(s)
        owner = {id(s): q for q in queries for s in q.samples}
        if self.path == "text":
            self._text(todo, owner, temp)
        else:
            self._probability(todo, owner, temp)

    def _text(self, todo: list[Sample], owner: dict[int, Query], temp: float) -> None:
        reqs = [GenRequest(owner[id(s)].messages, "", None, self.config.reasoning_tokens, temp, s.seed) for s in todo]
        for s, r in zip(todo, self.backend.generate(reqs)):
            s.calls += 1
            if r.error is not None or r.text is None:
                s.error_kind, s.reason = (r.error.kind if r.error else "backend_error"), str(r.error)
                continue
            s.reply = r.text
            try:
                self._read_text(s, r.text)
            except AnswerError as e:
                if self._apply_fallback(s, r.text):
                    continue
                cut = r.finish_reason == "length"
                s.error_kind = "budget_exhausted" if cut else "invalid_output"
                s.reason = (f"{e.reason} (the reply used the whole budget of {self.config.reasoning_tokens} tokens)" if cut
                            else f"{e.reason} (finish_reason={r.finish_reason})")

    def _read_text(self, s: Sample, reply: str) -> None:
        p = self.preset
        if p.mode == "pairwise":
            assert p.parse is not None
            side = pair_verdict(p.parse, reply)
            s.dist = {x: float(x == side) for x in SIDES}
        else:
            assert p.fields is not None
            s.scores = {f.name: field_score(f, reply) for f in p.fields}

    def _apply_fallback(self, s: Sample, reply: str) -> bool:
        fb = self._fallback
        if fb is None:
            return False
        p = self.preset
        for i, rule in enumerate(fb.parse):
            try:
                got = apply_rule(rule, reply)
            except AnswerError:
                continue
            if p.mode == "pairwise" and rule.values is not None and got in rule.values:
                side = rule.values[got]
                s.dist = {x: float(x == side) for x in SIDES}
            elif p.mode == "pointwise" and p.fields is not None and len(p.fields) == 1 and _number(got) is not None:
                s.scores = {p.fields[0].name: float(_number(got))}  # type: ignore[arg-type]
            else:
                continue
            s.fallback = f"{fb.name}: parse rule {i}"
            return True
        if p.mode == "pairwise" and fb.prob_first is not None:
            s.dist = {"first": fb.prob_first, "second": 1.0 - fb.prob_first, "tie": 0.0}
        elif p.mode == "pointwise" and fb.score is not None and p.fields is not None and len(p.fields) == 1:
            s.scores = {p.fields[0].name: fb.score}
        else:
            return False
        s.fallback = f"{fb.name}: default"
        return True

    def _probability(self, todo: list[Sample], owner: dict[int, Query], temp: float) -> None:
        slot = self.preset.slot
        assert slot is not None
        reading: list[Sample] = []
        if self.preset.think:
            reqs = [GenRequest(owner[id(s)].messages, "", None, self.config.reasoning_tokens, temp, s.seed, (slot.open,)) for s in todo]
            for s, r in zip(todo, self.backend.generate(reqs)):
                s.calls += 1
                if r.error is not None or r.text is None:
                    s.error_kind, s.reason = (r.error.kind if r.error else "backend_error"), str(r.error)
                    continue
                s.reasoning = r.text
                if r.stop != slot.open:
                    if r.finish_reason == "length":
                        s.error_kind = "budget_exhausted"
                        s.reason = f"the reasoning used the whole budget of {self.config.reasoning_tokens} tokens without reaching {slot.open!r}"
                    else:
                        s.error_kind = "invalid_output"
                        s.reason = f"the reasoning ended without {slot.open!r} (finish_reason={r.finish_reason})"
                    continue
                if slot.after and slot.after not in r.text:
                    s.error_kind = "invalid_output"
                    s.reason = f"{slot.open!r} was opened inside the reasoning (no {slot.after!r} before it)"
                    continue
                reading.append(s)
        else:
            reading = list(todo)
        labels = tuple(slot.labels)
        reqs2 = [LabelRequest(owner[id(s)].messages, (s.reasoning or "") + slot.open + slot.prefix, labels) for s in reading]
        for s, r in zip(reading, self.backend.label_probs(reqs2) if reqs2 else []):
            s.calls += 1
            if r.error is not None or r.probs is None:
                s.error_kind, s.reason = (r.error.kind if r.error else "backend_error"), str(r.error)
                continue
            dist, mass = renormalize(r.probs)
            s.mass = mass
            if mass <= 0.0 or mass < self.config.min_label_mass:
                seen = "full vocabulary" if r.top_k is None else f"top {r.top_k} tokens"
                s.error_kind = "low_label_mass"
                s.reason = (f"probability on the labels {mass:.4g} is below min_label_mass {self.config.min_label_mass} "
                            f"(or zero) in the {seen} at the verdict position")
                continue
            if self.preset.mode == "pairwise":
                sides = self.preset.side_labels()
                s.dist = {x: sum(p for lab, p in dist.items() if sides[lab] == x) for x in SIDES}
            else:
                s.dist = {slot.labels[lab]: p for lab, p in dist.items()}

    # ----------------------------------------------------------------------------------------------
    def aggregate(self, q: Query) -> dict[str, Any]:
        """A query's aggregate: ``dist`` (mean), ``vote``, ``agreement``, per-sample records; or ``error``."""
        ok = [s for s in q.samples if s.error_kind is None]
        records = [self._record(s) for s in q.samples]
        if not ok:
            bad = q.samples[0]
            return {"error": (bad.error_kind, bad.reason), "samples": records}
        out: dict[str, Any] = {"samples": records, "valid_samples": len(ok)}
        if self.preset.mode == "pointwise" and ok[0].scores is not None:
            names = list(ok[0].scores)
            out["scores"] = {n: sum(s.scores[n] for s in ok) / len(ok) for n in names}  # type: ignore[index]
            votes = [_norm_scores(self.preset, s.scores) for s in ok]  # type: ignore[arg-type]
            out["vote"] = None
            out["agreement"] = 1.0 - (max(votes) - min(votes)) if len(votes) > 1 else 1.0
            return out
        keys = list(ok[0].dist or {})
        mean = {kk: sum((s.dist or {}).get(kk, 0.0) for s in ok) / len(ok) for kk in keys}
        picks = [max(keys, key=lambda kk, s=s: ((s.dist or {})[kk], -keys.index(kk))) for s in ok]
        counts = Counter(picks)
        vote = max(keys, key=lambda kk: (counts.get(kk, 0), -keys.index(kk)))
        out.update(dist=mean, vote=vote, agreement=counts[vote] / len(ok))
        return out

    def _record(self, s: Sample) -> dict[str, Any]:
        rec: dict[str, Any] = {"seed": s.seed, "calls": s.calls}
        limit = self.config.max_reasoning_chars
        for name in ("reasoning", "reply"):
            text = getattr(s, name)
            if text is not None:
                rec[name] = text[-limit:] if limit else ""
                if len(text) > limit:
                    rec[f"{name}_truncated_from"] = len(text)
        for name in ("dist", "scores", "mass", "fallback", "error_kind", "reason"):
            v = getattr(s, name)
            if v is not None:
                rec[name] = v
        return rec

    def pair_value(self, ab: dict[str, Any], ba: dict[str, Any]) -> dict[str, Any]:
        """Both orders' aggregates -> the debiased pair record (``prob_a_wins`` and per-order details)."""
        def shown(d: dict[str, float]) -> dict[str, float]:
            return {"A": d["first"], "B": d["second"], "tie": d["tie"]}

        return debias_pair(shown(ab["dist"]), shown(ba["dist"]))

    def point_value(self, agg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """A pointwise aggregate -> (value in [0, 1], per-field details)."""
        p = self.preset
        assert p.fields is not None
        if "scores" in agg:
            return _norm_scores(p, agg["scores"]), {"scores": agg["scores"]}
        f = p.fields[0]
        dist = {str(int(float(v))) if float(v).is_integer() else v: pr for v, pr in agg["dist"].items()}
        ev = expected_value(dist) if all(k.lstrip("-").isdigit() for k in dist) else sum(float(k) * v for k, v in dist.items())
        return (ev - f.lo) / (f.hi - f.lo), {"expected": {f.name: ev}, "probs": agg["dist"]}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _norm_scores(preset: Preset, scores: dict[str, float]) -> float:
    """The weighted mean of the fields' normalized scores, in [0, 1] (clipped: a fallback may be out of range)."""
    assert preset.fields is not None
    total = sum(f.weight for f in preset.fields)
    v = sum(f.weight * (scores[f.name] - f.lo) / (f.hi - f.lo) for f in preset.fields) / total
    return min(1.0, max(0.0, v))
