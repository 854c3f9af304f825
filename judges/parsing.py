"""Reading a judge's answer: the one answer slot, or one JSON object constrained by a schema.

The parser sees only the judge's OWN reply (never the prompt or the responses), and within it only
one place:

* answer slot: ``<answer>LABEL</answer>`` at the very start of the reply (after optional
  whitespace). When the backend prefilled ``<answer>``, the reply starts inside the slot. Text
  after the slot (reasons, quoted responses, a second ``<answer>``) is never read;
* JSON: the whole reply must be exactly one JSON object (whitespace around it allowed) with
  exactly the schema's keys and allowed values; truncated or extra output is invalid.

Every failure raises :class:`AnswerError` with a reason; the judge turns it into a retry and, in the
end, an explicit ``invalid`` result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmrm.judges.presets import ParseRule, ScoreField

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


class AnswerError(ValueError):
    """The judge's reply cannot be read; ``reason`` says why (it goes into the invalid result)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def match_label(content: str, labels: tuple[str, ...] | list[str]) -> str:
    """The label that ``content`` (stripped) names: exact, else the unique case-insensitive match."""
    c = content.strip()
    if c in labels:
        return c
    folded = [lab for lab in labels if lab.lower() == c.lower()]
    if len(folded) == 1:
        return folded[0]
    raise AnswerError(f"answer {c[:40]!r} is not one of the labels {list(labels)}")


def parse_slot(reply: str, labels: tuple[str, ...] | list[str], *, prefilled: bool) -> str:
    """Read the label from the answer slot at the start of ``reply``.

    ``prefilled``: the backend already wrote ``<answer>`` into the reply, so ``reply`` is the
    continuation and starts inside the slot.
    """
    text = reply
    if not prefilled:
        stripped = reply.lstrip()
        if not stripped.startswith(ANSWER_OPEN):
            raise AnswerError(f"reply does not start with {ANSWER_OPEN}: {reply[:40]!r}")
        text = stripped[len(ANSWER_OPEN):]
    end = text.find(ANSWER_CLOSE)
    if end < 0:
        raise AnswerError(f"answer slot is not closed with {ANSWER_CLOSE}: {text[:40]!r}")
    return match_label(text[:end], labels)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the LAST duplicate key, so '{"verdict": "B", "verdict": "A"}' would read as A.
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise AnswerError(f"duplicate JSON keys {dup}")
    return dict(pairs)


@dataclass(frozen=True)
class AnswerField:
    """One key of a JSON answer and its allowed labels; ``numeric`` labels are JSON integers."""

    name: str
    labels: tuple[str, ...]
    numeric: bool

    def json_value(self, label: str) -> str:
        return label if self.numeric else json.dumps(label)


@dataclass(frozen=True)
class AnswerSchema:
    """A flat JSON object of enum-valued keys: the only JSON shape judges ask for.

    One class gives the JSON Schema (for servers with structured output), the template a constrained
    decoder follows (``hf``), a human-readable description (the prompt), and the strict parser.
    """

    fields: tuple[AnswerField, ...]

    @classmethod
    def single(cls, name: str, labels: list[str] | tuple[str, ...]) -> "AnswerSchema":
        numeric = all(lab.isdigit() for lab in labels)
        return cls((AnswerField(name, tuple(labels), numeric),))

    def json_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for f in self.fields:
            props[f.name] = {"type": "integer", "enum": [int(x) for x in f.labels]} if f.numeric else {"type": "string", "enum": list(f.labels)}
        return {"type": "object", "properties": props, "required": [f.name for f in self.fields], "additionalProperties": False}

    def template(self) -> list[str | tuple[str, ...]]:
        """Fixed text segments and label choices, in order, spelling the canonical compact JSON."""
        segs: list[str | tuple[str, ...]] = []
        for i, f in enumerate(self.fields):
            segs.append(("{" if i == 0 else ", ") + json.dumps(f.name) + ": " + ("" if f.numeric else '"'))
            segs.append(f.labels)
            if not f.numeric:
                segs.append('"')
        segs.append("}")
        return segs

    def describe(self) -> str:
        inner = ", ".join(f"{json.dumps(f.name)}: <{' | '.join(f.json_value(lab) for lab in f.labels)}>" for f in self.fields)
        return "{" + inner + "}"

    def parse(self, reply: str) -> dict[str, str]:
        """The labels of a reply that must be exactly one JSON object of this schema."""
        text = reply.strip()
        if not text:
            raise AnswerError("empty reply where a JSON object was expected")
        try:
            obj, end = json.JSONDecoder(object_pairs_hook=_no_duplicates).raw_decode(text)
        except json.JSONDecodeError as e:
            raise AnswerError(f"reply is not complete JSON ({e.msg} at char {e.pos}; {len(text)} chars, truncated?)") from e
        if text[end:].strip():
            raise AnswerError(f"extra text after the JSON object: {text[end:end + 40]!r}")
        if not isinstance(obj, dict):
            raise AnswerError(f"JSON answer is a {type(obj).__name__}, not an object")
        want = {f.name for f in self.fields}
        if set(obj) != want:
            raise AnswerError(f"JSON keys {sorted(obj)} differ from the schema's {sorted(want)}")
        out: dict[str, str] = {}
        for f in self.fields:
            v = obj[f.name]
            if f.numeric:
                if isinstance(v, bool) or not isinstance(v, int) or str(v) not in f.labels:
                    raise AnswerError(f"{f.name}={v!r} is not one of {list(f.labels)}")
                out[f.name] = str(v)
            else:
                if not isinstance(v, str):
                    raise AnswerError(f"{f.name}={v!r} is not a string label")
                out[f.name] = match_label(v, f.labels)
        return out


# --------------------------------------------------------------------------------------------------
# Presets: the verdict of a published judge's free-text reply (rules are data, see mmrm.judges.presets)


def apply_rule(rule: "ParseRule", reply: str) -> str:
    """The verdict text that ``rule`` reads from ``reply`` (the judge's own reply only).

    ``rule.after``: only the text after the LAST occurrence of that marker is read (missing -> error).
    ``rule.remove``: those strings are deleted from the text read (after the cut), in order.
    ``rule.occurrence``: ``unique`` needs every match to name the same verdict; ``first`` / ``last``
    take that match. Raises :class:`AnswerError` with the reason when nothing (or no single verdict)
    is found.
    """
    text = reply
    if rule.after is not None:
        at = reply.rfind(rule.after)
        if at < 0:
            raise AnswerError(f"reply has no {rule.after!r} (truncated?): {reply[-60:]!r}")
        text = reply[at + len(rule.after):]
    for gone in rule.remove:
        text = text.replace(gone, "")
    found = [m.group("v").strip() for m in rule.regex().finditer(text)]
    if not found:
        where = f" after {rule.after!r}" if rule.after else ""
        raise AnswerError(f"no verdict matching {rule.pattern!r}{where}: {text[-60:]!r}")
    if rule.occurrence == "first":
        return found[0]
    if rule.occurrence == "last":
        return found[-1]
    if len(set(found)) > 1:
        raise AnswerError(f"the reply names different verdicts {sorted(set(found))}")
    return found[0]


def pair_verdict(rule: "ParseRule", reply: str) -> str:
    """``first``, ``second`` or ``tie``: the side a pairwise reply names, read by ``rule``."""
    got = apply_rule(rule, reply)
    assert rule.values is not None
    if got not in rule.values:
        raise AnswerError(f"verdict {got[:40]!r} is not one of {sorted(rule.values)}")
    return rule.values[got]


def field_score(field: "ScoreField", reply: str) -> float:
    """The raw score of one pointwise field, range-checked (``lo..hi``; an integer when required)."""
    got = apply_rule(field.parse, reply)
    try:
        value = float(got)
    except ValueError:
        raise AnswerError(f"{field.name}: {got[:40]!r} is not a number") from None
    if field.integer and not value.is_integer():
        raise AnswerError(f"{field.name}: {got!r} is not an integer")
    if not field.lo <= value <= field.hi:
        raise AnswerError(f"{field.name}: {value:g} is outside {field.lo:g}..{field.hi:g}")
    return value
