"""The contract between a judge and its backend: batched requests in, one reply per request out.

A backend never raises for one bad item: each reply carries either a value or an ``error``
(an :class:`~mmrm.rm.errors.MmrmError`), so a failed item never fails its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from mmrm.judges.parsing import AnswerSchema
from mmrm.rm.errors import MmrmError
from mmrm.rm.types import Message


@dataclass(frozen=True)
class LabelRequest:
    """Read the next-token probabilities of ``labels`` after ``messages`` + assistant ``prefill``."""

    messages: list[Message]
    prefill: str
    labels: tuple[str, ...]


@dataclass
class LabelReply:
    """Un-normalized label probabilities at the verdict position (or an error).

    ``top_k``: how many top tokens the backend could see (``None``: the full vocabulary). A label
    outside the top-k counts as probability 0, so ``mass`` is then a lower bound.
    """

    probs: dict[str, float] | None = None
    top_k: int | None = None
    error: MmrmError | None = None


@dataclass(frozen=True)
class GenRequest:
    """Generate a reply. ``prefill`` starts the assistant turn; ``schema`` constrains it to JSON;
    generation ends at the first of the ``stop`` strings (which the reply's text does not include)."""

    messages: list[Message]
    prefill: str = ""
    schema: AnswerSchema | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class GenReply:
    """Generated text (the continuation after any prefill), why it stopped, or an error.

    ``stop``: the stop string that ended generation (not part of ``text``); None when it ended
    otherwise (end of sequence, the token cap) or the server does not say.
    """

    text: str | None = None
    finish_reason: str | None = None
    stop: str | None = None
    error: MmrmError | None = None
    usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class JudgeBackend(Protocol):
    """What a judge needs from a model server or an in-process model."""

    engine: str  # "hf" or "openai" (goes into Provenance.engine)
    scorer_id: str  # model name or checkpoint directory name
    dtype: str | None
    supports_logprobs: bool
    supports_json_schema: bool
    supports_prefill: bool

    def label_probs(self, requests: list[LabelRequest]) -> list[LabelReply]:
        """One reply per request, same order; batched (hf) or concurrent (openai)."""
        ...

    def generate(self, requests: list[GenRequest]) -> list[GenReply]:
        """One reply per request, same order; batched (hf) or concurrent (openai)."""
        ...

    def check_labels(self, prefill: str, labels: tuple[str, ...]) -> None:
        """Raise :class:`~mmrm.rm.errors.ConfigError` unless each label is ONE token after ``prefill``."""
        ...

    def config_fingerprint(self) -> dict[str, Any]:
        """The settings that change scores (model identity, dtype, top-k, ...), for the judge fingerprint."""
        ...
