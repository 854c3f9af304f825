"""Judge presets as data: a published generative reward model's prompt, answer format and parser.

A preset reproduces how its authors use their model: the exact prompt text (with the question and
the responses filled in), the chat roles, where the images go, the reasoning the model writes first,
where the verdict sits, and how the authors read it. Presets ship as YAML beside this module
(``presets/*.yaml``, data only); a user adds one by writing a YAML file and passing its path to
:func:`load_preset` (or to :class:`~mmrm.judges.Judge`), without code.

How a verdict is read (:mod:`mmrm.judges.reasoning` runs it):

* **probability** (``slot.labels`` are single tokens and the backend continues a prefilled assistant
  turn and returns logprobs): the model first generates its reasoning up to ``slot.open`` (a token
  budget; generation stops at that string), then mmrm appends ``slot.open + slot.prefix`` to the
  reasoning and reads the next-token distribution over the labels;
* **text** (otherwise): the whole reply is generated and :attr:`Preset.parse` reads the verdict
  from the reply only (never from the prompt), strictly: no match, or matches that disagree, is an
  ``invalid`` result. The authors' own lenient fallbacks (``[0.5, 0.5]``, ``[0, 1]``, the last digit
  anywhere in the reply, a score of 0) are :attr:`Preset.fallbacks`, each with a name, applied only
  when the judge is configured with ``JudgeOptions(preset_fallback=NAME)``; every result that used
  one says so in ``details.fallback``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.errors import ConfigError

LIBRARY_DIR = Path(__file__).with_name("presets")

#: What a pairwise label means: the response shown first, the one shown second, or a tie.
Side = Literal["first", "second", "tie"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where a preset's text was transcribed from."""

    repo: str = Field(min_length=1, description="owner/name of the authors' repository (or the model card's home).")
    path: str = Field(min_length=1, description="File inside the repository.")
    commit: str = Field(pattern=r"^[0-9a-f]{40}$", description="The commit the text was read at.")
    note: str = Field(default="", description="What was taken from this file.")


class Slot(_Strict):
    """Where the verdict sits in the reply, for reading it from token probabilities.

    The verdict position is right after ``open + prefix``; each label must be ONE token there
    (checked through the backend when the judge starts).
    """

    open: str = Field(default="", description="Text that opens the verdict ('<answer>'); generation of the reasoning stops at it. "
                      "Empty: the verdict is the very start of the reply (no reasoning).")
    prefix: str = Field(default="", description="Text between `open` and the label, so that labels are single tokens ('Answer ' before '1').")
    after: str | None = Field(default=None, description="The reasoning must contain this marker before the slot opens "
                              "('</think>'); an answer tag inside the reasoning is then invalid, not read.")
    labels: dict[str, str] = Field(
        min_length=2, description="Label token -> meaning: for pairwise 'first', 'second' or 'tie'; for pointwise the integer score it stands for.")


class ParseRule(_Strict):
    """A strict text parser: a regular expression over the judge's own reply (or a part of it)."""

    after: str | None = Field(default=None, description="Read only the text after the LAST occurrence of this marker "
                              "('</think>': an answer inside the reasoning is not read); the marker missing -> invalid.")
    remove: list[str] = Field(default_factory=list, description="Strings deleted from the text before matching, in order "
                              "(VL-RewardBench's cal.py reads response.replace('\\n', '').replace('*', '')).")
    pattern: str = Field(min_length=1, description="Python regular expression with one group `v`, the verdict text.")
    flags: list[Literal["IGNORECASE", "DOTALL", "MULTILINE"]] = Field(default_factory=list, description="re flags of `pattern`.")
    occurrence: Literal["unique", "first", "last"] = Field(
        default="unique", description="unique: every match must name the same verdict (else invalid); first / last: that match.")
    values: dict[str, str] | None = Field(
        default=None, description="Pairwise: matched text (stripped) -> 'first' / 'second' / 'tie'. Unset for pointwise (a number is read).")

    @model_validator(mode="after")
    def _compiles(self) -> "ParseRule":
        try:
            rx = self.regex()
        except re.error as e:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {e}") from e
        if "v" not in rx.groupindex:
            raise ValueError(f"pattern {self.pattern!r} needs a named group `v` (the verdict text)")
        return self

    def regex(self) -> re.Pattern[str]:
        flags = 0
        for f in self.flags:
            flags |= getattr(re, f)
        return re.compile(self.pattern, flags)


class ScoreField(_Strict):
    """One number a pointwise preset's reply carries (a 'Final Score', an 'Alignment Score')."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$", description="Dimension name (in details).")
    parse: ParseRule = Field(description="Reads the number (group `v`) from the reply.")
    lo: float = Field(description="Lowest score of the scale; normalized value = (s - lo) / (hi - lo).")
    hi: float = Field(description="Highest score of the scale.")
    weight: float = Field(default=1.0, gt=0, description="Weight in the mean over fields.")
    integer: bool = Field(default=True, description="The score must be an integer (a '2.7' is then invalid).")


class Fallback(_Strict):
    """The authors' own behaviour when their parser finds no verdict; off unless the judge enables it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Named in `details.fallback` of every result that used it.")
    description: str = Field(min_length=1, description="What the authors' code does, and where.")
    parse: list[ParseRule] = Field(default_factory=list, description="The authors' looser parsers, tried in order before the "
                                   "default (e.g. the last '1' or '2' anywhere in the reply).")
    prob_first: float | None = Field(default=None, ge=0, le=1, description="Pairwise: P(first shown wins) when nothing parses ([0.5, 0.5] -> 0.5).")
    score: float | None = Field(default=None, description="Pointwise: the raw score when nothing parses (the authors' 0).")


class Preset(_Strict):
    """A published generative reward model's prompt, answer format and parser (see the module docstring)."""

    kind: Literal["preset"] = Field(description="Always 'preset' (tells a preset file from a rubric file).")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Preset name (its file stem when shipped).")
    version: str = Field(default="1", description="Bumped when the preset's text or parser changes.")
    description: str = Field(min_length=1, description="Which model this is for and what it judges.")
    sources: list[Source] = Field(min_length=1, description="The authors' files the prompt and parser were transcribed from.")
    mode: Literal["pairwise", "pointwise"] = Field(description="pairwise: which of two responses is better; pointwise: a score.")
    system: str | None = Field(default=None, description="System message, if the authors send one.")
    template: str = Field(min_length=1, description="The user message text; str.format fields {question} and {response} "
                          "(pointwise) or {answer1} and {answer2} (pairwise), filled with the texts as they are. A response's "
                          "images (a generated image) go with the prompt's images, after them.")
    image_placement: Literal["before_text", "after_text"] = Field(
        default="before_text", description="Where the prompt's images go in the one user message, relative to the text.")
    think: bool = Field(description="The model reasons before the verdict (generated first, within the token budget).")
    slot: Slot | None = Field(default=None, description="Where the verdict is read from token probabilities; unset: text only.")
    parse: ParseRule | None = Field(default=None, description="Pairwise: the strict parser of the verdict in the reply.")
    fields: list[ScoreField] | None = Field(default=None, description="Pointwise: the scores the reply carries (their weighted mean is the value).")
    fallbacks: list[Fallback] = Field(default_factory=list, description="The authors' parse-failure behaviours, by name "
                                      "(off by default; JudgeOptions.preset_fallback names the one to apply).")

    def fallback(self, name: str) -> Fallback:
        """The fallback called ``name`` (ConfigError naming the ones there are)."""
        for f in self.fallbacks:
            if f.name == name:
                return f
        raise ConfigError(f"preset {self.name!r} has no fallback {name!r}", field="preset_fallback",
                          limit=[f.name for f in self.fallbacks])

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        import string

        names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        allowed = {"question", "answer1", "answer2"} if self.mode == "pairwise" else {"question", "response"}
        if names - allowed:
            raise ValueError(f"a {self.mode} template may use only the fields {sorted(allowed)}; got {sorted(names - allowed)}")
        if self.mode == "pairwise" and not {"answer1", "answer2"} <= names:
            raise ValueError("a pairwise template needs the fields {answer1} and {answer2}")
        fb = [f.name for f in self.fallbacks]
        if len(set(fb)) != len(fb):
            raise ValueError(f"duplicate fallback names: {fb}")
        if self.mode == "pairwise":
            if self.parse is None or self.parse.values is None:
                raise ValueError("a pairwise preset needs `parse` with `values` (matched text -> first/second/tie)")
            bad = {v for v in self.parse.values.values() if v not in ("first", "second", "tie")}
            if self.slot is not None:
                bad |= {v for v in self.slot.labels.values() if v not in ("first", "second", "tie")}
            if bad:
                raise ValueError(f"pairwise meanings must be first, second or tie; got {sorted(bad)}")
        else:
            if not self.fields:
                raise ValueError("a pointwise preset needs `fields` (the scores its reply carries)")
            if self.slot is not None:
                if len(self.fields) != 1:
                    raise ValueError("a pointwise slot reads one score; this preset has several fields")
                for v in self.slot.labels.values():
                    try:
                        float(v)
                    except ValueError:
                        raise ValueError(f"pointwise slot label meanings must be numbers; got {v!r}") from None
        if self.think and self.slot is not None and not self.slot.open:
            raise ValueError("a reasoning preset's slot needs `open` (where the reasoning stops)")
        return self

    def fingerprint(self) -> str:
        """Content hash of the preset (canonical JSON), part of every judge fingerprint."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def side_labels(self) -> dict[str, Side]:
        """Pairwise slot labels -> first / second / tie."""
        assert self.slot is not None
        return dict(self.slot.labels)  # type: ignore[arg-type]


def list_presets() -> list[str]:
    """Names of the presets shipped with mmrm."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml"))


def read_spec(path: Path) -> object:
    """The parsed YAML/JSON of a rubric or preset file (ConfigError when unreadable)."""
    try:
        raw = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}", field="preset") from e
    try:
        return json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}", field="preset") from e


def load_preset(name_or_path: str | Path) -> Preset:
    """Load a shipped preset by name (``"r1_reward"``) or a user's YAML/JSON file by path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = LIBRARY_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise ConfigError(f"no shipped preset named {name_or_path!r}", field="preset", limit=list_presets())
    data = read_spec(p)
    try:
        return Preset.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"preset file {p} does not match the preset schema: {e}", field="preset") from e


def is_preset_file(path: Path) -> bool:
    """True when ``path`` is a preset file (``kind: preset``), not a rubric."""
    data = read_spec(path)
    return isinstance(data, dict) and data.get("kind") == "preset"
