"""The wire protocol: request and response schemas of the versioned HTTP API (``/v1/...``).

The server validates requests with these models and the client builds its requests from them, so
this module (light: pydantic only, no torch, no Ray) is the one copy of the API reference; the
OpenAPI document served at ``/openapi.json`` is generated from it. Compatibility routes (OpenRLHF, vLLM ``/classify``) keep
their own shapes in :mod:`mmrm.serve.compat`.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmrm.rm.errors import ErrorKind
from mmrm.rm.scorer import GroupResult as CoreGroupResult
from mmrm.rm.types import Group, Pair, Sample, ScoreResult


#: What a request does when one of its items cannot be scored (bad media, too long, wrong modality):
#: ``return`` (default) answers 200 with that item's invalid result; ``fail`` answers 422 naming the
#: first failing field.
OnItemError = Literal["return", "fail"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Name of a served reward model (see GET /v1/models).")
    on_item_error: OnItemError = Field(
        default="return",
        description="'return': a failed item is that item's invalid result (200); 'fail': the whole request "
                    "answers 422 naming the first failing field.",
    )


class ScoreRequest(_Request):
    """Pointwise: one reward per (prompt, response) sample."""

    items: list[Sample] = Field(min_length=1, description="Samples to score.")


class CompareRequest(_Request):
    """Pairwise: P(A > B) = sigmoid(r_A - r_B) per pair."""

    pairs: list[Pair] = Field(min_length=1, description="Pairs to compare.")


class RankRequest(_Request):
    """Groups (GRPO): raw rewards and group-normalized rewards per group."""

    groups: list[Group] = Field(min_length=1, description="Groups of responses to one prompt each.")
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
    on_item_error: OnItemError = Field(default="return", description="As in the reward-model routes.")

    @model_validator(mode="after")
    def _one(self) -> "JudgeRequest":
        if (self.items is None) == (self.pairs is None):
            raise ValueError("give exactly one of items and pairs")
        n = len(self.items or self.pairs or [])
        if self.references is not None and len(self.references) != n:
            raise ValueError(f"references must have one entry per item ({n}), got {len(self.references)}")
        return self


class ItemResult(ScoreResult):
    """One item's result: the shared :class:`~mmrm.rm.types.ScoreResult` record plus its index in the request."""

    index: int = Field(ge=0, description="Position of the item in the request.")

    @classmethod
    def of(cls, index: int, result: ScoreResult) -> "ItemResult":
        out = cls(index=index, **result.model_dump())
        out._error = result._error
        return out


class GroupResult(CoreGroupResult):
    """One group's record on the wire: the core :class:`~mmrm.rm.scorer.GroupResult` plus its index."""

    index: int = Field(ge=0, description="Position of the group in the request.")
    results: list[ItemResult] = Field(description="One result per response, in order.")


class Usage(BaseModel):
    items: int = Field(description="Items (responses, pairs) in the request.")
    invalid: int = Field(default=0, description="Items that have no value (an invalid result).")


class _Envelope(BaseModel):
    id: str = Field(description="Response id: '<route>-<X-Request-Id>' (the caller's request id when one was sent).")
    object: str = Field(description="What the response holds.")
    created: int = Field(default_factory=lambda: int(time.time()), description="Unix time of the response.")
    model: str = Field(description="The model or judge that scored.")
    usage: Usage = Field(description="Item counts.")


class ScoreResponse(_Envelope):
    object: Literal["score"] = "score"
    data: list[ItemResult] = Field(description="One result per item, in request order.")


class CompareResponse(_Envelope):
    object: Literal["compare"] = "compare"
    data: list[ItemResult] = Field(description="One result per pair, in request order; value = P(A>B).")


class RankResponse(_Envelope):
    object: Literal["rank"] = "rank"
    data: list[GroupResult] = Field(description="One entry per group, in request order.")


class JudgeResponse(_Envelope):
    object: Literal["judge"] = "judge"
    data: list[ItemResult] = Field(description="One result per item or pair, in request order.")


class ModelCard(BaseModel):
    id: str = Field(description="The name requests use.")
    object: Literal["model"] = "model"
    kind: Literal["reward_model", "judge"] = Field(description="Reward model or generative judge.")
    fingerprint: str | None = Field(default=None, description="Content hash of the checkpoint or rubric+backend.")
    engine: str | None = Field(default=None, description="Engine or backend: hf, vllm, openai.")
    dtype: str | None = Field(default=None, description="Compute dtype, if any.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(description="Served models and judges.")


class ErrorBody(BaseModel):
    kind: ErrorKind = Field(description="Machine-readable error kind.")
    message: str = Field(description="What went wrong, for a person.")
    field: str | None = Field(default=None, description="Path of the request field at fault, if any.")
    limit: Any = Field(default=None, description="The limit that was broken, if any.")
    type: str | None = Field(default=None, description="vLLM's error type name for the status (e.g. UnprocessableEntityError).")
    code: int | None = Field(default=None, description="The HTTP status, as in vLLM's error bodies.")


class ErrorResponse(BaseModel):
    error: ErrorBody = Field(description="The error.")


def new_id(prefix: str, request_id: str | None = None) -> str:
    """A response id ``<prefix>-<request id>``: the caller's X-Request-Id when given (vLLM's servers
    build theirs the same way), else a fresh one."""
    return f"{prefix}-{request_id or uuid.uuid4().hex[:24]}"


# vLLM 0.32's error type names (vllm/entrypoints/serve/engine/protocol.py, create_error_response);
# other statuses get the HTTP phrase, as its HTTP handler does.
_VLLM_TYPES = {400: "BadRequestError", 404: "NotFoundError", 422: "UnprocessableEntityError",
               500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError"}


def error_type(status: int) -> str:
    """The ``type`` of an error body with this status, as vLLM names it."""
    try:
        return _VLLM_TYPES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"
