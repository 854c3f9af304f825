"""Rubrics as data: pydantic models, the YAML library, and the pinned aggregation rules.

A rubric is one or more *dimensions*, each judged on its own and then combined:

* a **scale** dimension (pointwise): integer levels ``lo..hi``, every level with an anchored
  description of what it means;
* a **checklist** dimension: items with weights, ``binary`` (yes/no) or ``graded`` (0..max_grade),
  some of them *pitfalls* whose score is subtracted.

Pinned rules (tests check them against hand computations):

* checklist score = (sum of weight x item score over positive items - sum of weight x item score
  over pitfall items) / (sum of positive weights), clipped to [0, 1]; an item score is in [0, 1]
  (binary: P(yes) or 0/1; graded: grade / max_grade);
* scale score normalized to [0, 1] as (s - lo) / (hi - lo);
* dimensions combine by ``weighted_mean``, ``min`` or ``geometric_mean`` (weighted: the product of
  s_d ** (w_d / sum w)), the VIEScore-style combiners for semantic consistency x perceptual quality.

The shipped library lives in ``rubrics/*.yaml`` beside this module; users add their own YAML or
JSON files and load them with :func:`load_rubric` (a path) without writing code.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.errors import ConfigError

LIBRARY_DIR = Path(__file__).with_name("rubrics")

Combiner = Literal["weighted_mean", "min", "geometric_mean"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScaleLevel(_Strict):
    """One anchored level of a pointwise scale."""

    value: int = Field(ge=0, description="The integer label the judge answers with.")
    description: str = Field(min_length=1, description="What a response at this level looks like.")


class Scale(_Strict):
    """A 1..K (or 0..K) integer scale; every level has an anchor description."""

    levels: list[ScaleLevel] = Field(min_length=2, description="All levels, lowest first, consecutive integers.")

    @model_validator(mode="after")
    def _consecutive(self) -> "Scale":
        values = [lv.value for lv in self.levels]
        if values != list(range(values[0], values[0] + len(values))):
            raise ValueError(f"scale levels must be consecutive integers in increasing order, got {values}")
        return self

    @property
    def lo(self) -> int:
        return self.levels[0].value

    @property
    def hi(self) -> int:
        return self.levels[-1].value

    @property
    def labels(self) -> list[str]:
        return [str(lv.value) for lv in self.levels]


class ChecklistItem(_Strict):
    """One checklist item. Pitfalls describe something BAD; a yes on a pitfall subtracts."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$", description="Stable item id (used as JSON key).")
    text: str = Field(min_length=1, description="The yes/no question or graded criterion.")
    weight: float = Field(default=1.0, gt=0, description="Relative weight in the weighted sum.")
    kind: Literal["binary", "graded"] = Field(default="binary", description="yes/no, or a grade 0..max_grade.")
    max_grade: int = Field(default=4, ge=1, le=9, description="Top grade of a graded item (single-digit labels).")
    pitfall: bool = Field(default=False, description="True: the item describes a fault; its score is subtracted.")

    @property
    def labels(self) -> list[str]:
        return ["yes", "no"] if self.kind == "binary" else [str(g) for g in range(self.max_grade + 1)]


class Dimension(_Strict):
    """One judged dimension: exactly one of ``scale`` (pointwise) or ``items`` (checklist)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    description: str = Field(min_length=1, description="What this dimension judges (shown to the judge).")
    weight: float = Field(default=1.0, gt=0, description="Weight in the rubric's combiner.")
    scale: Scale | None = None
    items: list[ChecklistItem] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        if (self.scale is None) == (self.items is None):
            raise ValueError(f"dimension {self.name!r} needs exactly one of `scale` or `items`")
        if self.items is not None:
            if not any(not it.pitfall for it in self.items):
                raise ValueError(f"checklist {self.name!r} needs at least one positive (non-pitfall) item")
            ids = [it.id for it in self.items]
            if len(set(ids)) != len(ids):
                raise ValueError(f"checklist {self.name!r} has duplicate item ids: {ids}")
        return self

    @property
    def kind(self) -> Literal["scale", "checklist"]:
        return "scale" if self.scale is not None else "checklist"


class Rubric(_Strict):
    """A named, versioned rubric: dimensions plus how to combine them."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    version: str = Field(default="1")
    description: str = Field(min_length=1, description="The task the responses answer (shown to the judge).")
    dimensions: list[Dimension] = Field(min_length=1)
    combiner: Combiner = Field(default="weighted_mean", description="How dimension scores combine.")
    requires_reference: bool = Field(default=False, description="Reference-guided: each item needs a reference answer.")

    @model_validator(mode="after")
    def _unique(self) -> "Rubric":
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dimension names: {names}")
        return self

    def fingerprint(self) -> str:
        """Content hash of the rubric (canonical JSON), part of every judge fingerprint."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Loading


def list_rubrics() -> list[str]:
    """Names of the rubrics shipped with mmrm."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml"))


def load_rubric(name_or_path: str | Path) -> Rubric:
    """Load a shipped rubric by name (``"image_editing"``) or a user's YAML/JSON file by path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = LIBRARY_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise ConfigError(f"no shipped rubric named {name_or_path!r}", field="rubric", limit=list_rubrics())
    try:
        raw = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read rubric file {p}: {e}", field="rubric") from e
    try:
        data = json.loads(raw) if p.suffix == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"rubric file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}", field="rubric") from e
    try:
        return Rubric.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"rubric file {p} does not match the rubric schema: {e}", field="rubric") from e


# --------------------------------------------------------------------------------------------------
# Pinned aggregation


def checklist_score(items: list[ChecklistItem], scores: dict[str, float]) -> float:
    """Normalized weighted checklist score in [0, 1] (see the module docstring for the rule).

    ``scores`` maps every item id to its item score in [0, 1].
    """
    pos = sum(it.weight * scores[it.id] for it in items if not it.pitfall)
    neg = sum(it.weight * scores[it.id] for it in items if it.pitfall)
    total = sum(it.weight for it in items if not it.pitfall)
    return min(1.0, max(0.0, (pos - neg) / total))


def scale_normalized(scale: Scale, value: float) -> float:
    """A scale score mapped to [0, 1]."""
    return (value - scale.lo) / (scale.hi - scale.lo)


def combine(scores: dict[str, float], weights: dict[str, float], combiner: Combiner) -> float:
    """Combine per-dimension scores in [0, 1] with ``weighted_mean``, ``min`` or ``geometric_mean``."""
    if not scores:
        raise ValueError("combine needs at least one dimension score")
    if combiner == "min":
        return min(scores.values())
    total = sum(weights[k] for k in scores)
    if combiner == "weighted_mean":
        return sum(weights[k] * s for k, s in scores.items()) / total
    # Weighted geometric mean; a zero dimension gives zero (log would be -inf).
    if any(s <= 0.0 for s in scores.values()):
        return 0.0
    return math.exp(sum(weights[k] / total * math.log(s) for k, s in scores.items()))
