"""Request and response schemas of the versioned HTTP API (``/v1/...``).

The OpenAPI document served at ``/openapi.json`` is generated from these models, so this module
is the one copy of the API reference. Compatibility routes (OpenRLHF, vLLM ``/classify``) keep
their own shapes in :mod:`mmrm.serve.compat`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.types import Group, Pair, Provenance, Sample


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Name of a served reward model (see GET /v1/models).")


class ScoreRequest(_Request):
    """Pointwise: one reward per (prompt, response) sample."""

    items: list[Sample] = Field(min_length=1, description="Samples to score.")


class CompareRequest(_Request):
    """Pairwise: P(A > B) = sigmoid(r_A - r_B) per pair."""

    pairs: list[Pair] = Field(min_length=1)


class RankRequest(_Request):
    """Groups (GRPO): raw rewards and group-normalized rewards per group."""

    groups: list[Group] = Field(min_length=1)
    eps: float = Field(default=1e-6, gt=0, le=1, description="Epsilon of (r - mean) / (std + eps).")


class JudgeRequest(BaseModel):
    """Judge samples pointwise (scale / checklist rubrics) or pairs in both orders."""

    model_config = ConfigDict(extra="forbid")

    judge: str = Field(description="Name of a served judge (see GET /v1/models).")
    rubric: str | dict[str, Any] | None = Field(
        default=None, description="A rubric name the judge serves, or an inline rubric object; default: the judge's."
    )
    items: list[Sample] | None = Field(default=None, min_length=1, description="Samples to judge pointwise.")
    pairs: list[Pair] | None = Field(default=None, min_length=1, description="Pairs to judge (both orders, debiased).")
    references: list[str | None] | None = Field(default=None, description="Reference answers, one per item or pair.")

    @model_validator(mode="after")
    def _one(self) -> "JudgeRequest":
        if (self.items is None) == (self.pairs is None):
            raise ValueError("give exactly one of items and pairs")
        n = len(self.items or self.pairs or [])
        if self.references is not None and len(self.references) != n:
            raise ValueError(f"references must have one entry per item ({n}), got {len(self.references)}")
        return self


class ItemResult(BaseModel):
    """One item's result: the shared ScoreResult record plus its index in the request."""

    index: int
    value: float | None = Field(description="Reward (score, rank) or P(A>B) (compare); null when invalid.")
    prob_a_wins: float | None = None
    invalid: str | None = None
    error_kind: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance


class GroupResult(BaseModel):
    index: int
    results: list[ItemResult]
    normalized: list[float | None] = Field(description="Group-normalized rewards of the valid results; null for invalid ones.")


class Usage(BaseModel):
    items: int
    invalid: int = 0


class _Envelope(BaseModel):
    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage


class ScoreResponse(_Envelope):
    object: Literal["score"] = "score"
    data: list[ItemResult]


class CompareResponse(_Envelope):
    object: Literal["compare"] = "compare"
    data: list[ItemResult]


class RankResponse(_Envelope):
    object: Literal["rank"] = "rank"
    data: list[GroupResult]


class JudgeResponse(_Envelope):
    object: Literal["judge"] = "judge"
    data: list[ItemResult]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: Literal["reward_model", "judge"]
    fingerprint: str | None = None
    engine: str | None = None
    dtype: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    kind: str
    message: str
    field: str | None = None
    limit: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
