"""One small protocol over every scorer mmrm has: pairs in, one ScoreResult per pair out.

The scoring itself stays where it lives: :meth:`RewardModel.compare_results` (in-process),
:meth:`Judge.compare` (both orders, debiased), and the HTTP :class:`~mmrm.rm.client.Client`
(``/v1/compare`` or ``/v1/judge``). These wrappers only add a **scorer key**: a hash of what
determines the scores (checkpoint fingerprint, dtype, length policy; rubric + backend + judge config;
the service's model fingerprint), so stored results are reused exactly when they would come out the
same.

Specs (:class:`RewardModelSpec`, :class:`JudgeSpec`, :class:`ServiceSpec`) are plain data that build a
scorer where it runs: in this process, or once per Ray actor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

from mmrm.rm.types import Pair, ScoreResult
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "JudgeScorer",
    "JudgeSpec",
    "RewardModelScorer",
    "RewardModelSpec",
    "Scorer",
    "ScorerSpec",
    "ServiceScorer",
    "ServiceSpec",
    "scorer_key",
]

log = logging.getLogger(__name__)
ScorerKind = Literal["reward_model", "judge"]


@runtime_checkable
class Scorer(Protocol):
    """What the runner needs: a stable key, a kind, and batched pairwise scoring."""

    kind: ScorerKind
    name: str
    key: str

    def compare(self, pairs: Sequence[Pair]) -> list[ScoreResult]:
        """P(A > B) per pair, as :class:`ScoreResult` (failed items are ``invalid``, never raised)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the key was made from (goes into reports)."""
        ...

    @property
    def forward_calls(self) -> int | None:
        """Backbone forward passes so far (in-process reward models), else None."""
        ...


def scorer_key(descriptor: dict[str, Any]) -> str:
    """16 hex digits of a sha256 over a canonical JSON of ``descriptor``."""
    blob = json.dumps(descriptor, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _rm_descriptor(fingerprint: str, dtype: str, max_length: int, truncation: str, head_dtype: str = "float32") -> dict[str, Any]:
    return {"kind": "reward_model", "engine": "hf", "fingerprint": fingerprint, "dtype": dtype,
            "head_dtype": head_dtype, "max_length": max_length, "truncation": truncation}


class RewardModelScorer:
    """An in-process :class:`~mmrm.rm.reward_model.RewardModel` (``compare_results``)."""

    kind: ScorerKind = "reward_model"

    def __init__(self, rm: Any, *, key: str | None = None) -> None:
        from mmrm.rm.errors import ConfigError

        self.rm = rm
        self.name = rm.name
        head_dtype = str(next(rm.head.parameters()).dtype).removeprefix("torch.")
        self._desc = _rm_descriptor(rm.fingerprint, str(rm.dtype).removeprefix("torch."), rm.config.max_length,
                                    rm.config.truncation, head_dtype)
        if key is None and rm.fingerprint == "unsaved":
            raise ConfigError("this reward model was never saved, so it has no fingerprint to key results by; "
                              "save it (save_pretrained) or pass key=", field="key")
        self.key = key or scorer_key(self._desc)

    def compare(self, pairs: Sequence[Pair]) -> list[ScoreResult]:
        return self.rm.compare_results(pairs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, **self._desc}

    @property
    def forward_calls(self) -> int | None:
        return int(self.rm.forward_calls)


class JudgeScorer:
    """An in-process :class:`~mmrm.judges.judge.Judge` (``compare``: both orders, debiased)."""

    kind: ScorerKind = "judge"

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        prov = judge.provenance
        self.name = prov.scorer
        self._desc = {"kind": "judge", "engine": prov.engine, "fingerprint": judge.fingerprint, "dtype": prov.dtype}
        self.key = scorer_key(self._desc)

    def compare(self, pairs: Sequence[Pair]) -> list[ScoreResult]:
        return self.judge.compare(pairs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "rubric": self.judge.rubric.name, **self._desc}

    @property
    def forward_calls(self) -> int | None:
        return None


class ServiceScorer:
    """A model or judge served by mmrm, over HTTP (:class:`~mmrm.rm.client.Client`).

    The key uses the service's own fingerprint of the model (``GET /v1/models``), so a run resumed
    against a redeployed, different checkpoint does not mix its scores with the old ones.
    """

    def __init__(self, client: Any, *, model: str | None = None, judge: str | None = None,
                 rubric: str | None = None, batch_size: int = 32) -> None:
        if (model is None) == (judge is None):
            raise ValueError("give exactly one of model= (a reward model) and judge= (a served judge)")
        self.client = client
        self.model, self.judge, self.rubric = model, judge, rubric
        self.batch_size = batch_size
        self.kind: ScorerKind = "reward_model" if model else "judge"
        self.name = model or judge  # type: ignore[assignment]
        card = self._card()
        self._desc = {"kind": self.kind, "engine": "service", "service_model": self.name,
                      "fingerprint": card.get("fingerprint"), "dtype": card.get("dtype"),
                      "service_engine": card.get("engine"), "rubric": rubric}
        if card.get("fingerprint") is None:
            log.warning("the service reports no fingerprint for %r; results are keyed by its URL and name only", self.name)
            self._desc["base_url"] = client.base_url
        self.key = scorer_key(self._desc)

    def _card(self) -> dict[str, Any]:
        from mmrm.rm.errors import MmrmError

        try:
            data = self.client.request("GET", "/v1/models")
        except MmrmError as e:  # ServiceError / TransportError: still scores, but the key is weaker
            log.warning("GET /v1/models failed (%s)", e)
            return {}
        for card in data.get("data", []) if isinstance(data, dict) else []:
            if card.get("id") == self.name:
                return card
        return {}

    def compare(self, pairs: Sequence[Pair]) -> list[ScoreResult]:
        out: list[ScoreResult] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            if self.model is not None:
                out += self.client.compare(chunk, model=self.model)
            else:
                out += self.client.judge(pairs=chunk, judge=self.judge, rubric=self.rubric)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "base_url": self.client.base_url, **self._desc}

    @property
    def forward_calls(self) -> int | None:
        return None


# --------------------------------------------------------------------------------------------------
# Specs: serializable recipes that build a scorer where it runs (this process, or a Ray actor).


class RewardModelSpec(BaseModel):
    """A reward checkpoint scored in-process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reward_model"] = "reward_model"
    checkpoint: Path
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N (a Ray actor with a GPU gets cuda).")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    media_roots: list[Path] = Field(default_factory=list, description="Folders local media may be read from.")
    max_batch_size: int = Field(default=32, ge=1)
    max_length: int | None = None
    truncation: Literal["refuse", "left"] | None = None

    def descriptor(self) -> dict[str, Any]:
        """What the scorer key is made of, without loading the model (fingerprint + checkpoint config)."""
        from mmrm.rm import checkpoint as ckpt

        cfg = ckpt.read_config(self.checkpoint)
        if cfg is None:  # a sequence-classification checkpoint: its defaults, as RewardModel applies them
            max_length, truncation = self.max_length or 4096, self.truncation or "refuse"
        else:
            max_length, truncation = self.max_length or cfg.max_length, self.truncation or cfg.truncation
        return _rm_descriptor(ckpt.fingerprint(self.checkpoint), self.dtype, max_length, truncation)

    def key(self) -> str:
        """The scorer key without loading the model."""
        return scorer_key(self.descriptor())

    def describe(self) -> dict[str, Any]:
        """As :meth:`RewardModelScorer.describe`, without loading the model."""
        return {"name": self.checkpoint.name, "key": self.key(), **self.descriptor()}

    def build(self) -> RewardModelScorer:
        from mmrm.rm.media import MediaPolicy
        from mmrm.rm.reward_model import RewardModel

        rm = RewardModel.from_pretrained(
            self.checkpoint, device=self.device, dtype=self.dtype, max_batch_size=self.max_batch_size,
            max_length=self.max_length, truncation=self.truncation,
            media_policy=MediaPolicy(allowed_roots=[p.resolve() for p in self.media_roots]),
        )
        return RewardModelScorer(rm)


class JudgeSpec(BaseModel):
    """A judge: a rubric on an in-process transformers model (``hf``) or an OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["judge"] = "judge"
    rubric: str
    backend: Literal["hf", "openai"] = "hf"
    model: str = Field(description="hf: checkpoint directory; openai: the served model name.")
    base_url: str | None = Field(default=None, description="openai: the server's /v1 URL.")
    device: str = "cpu"
    dtype: str = "float32"
    media_roots: list[Path] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict, description="JudgeConfig fields.")

    def key(self) -> str | None:
        return None  # a judge's fingerprint needs its backend; build() computes it

    def build(self) -> JudgeScorer:
        from mmrm.judges import Judge, JudgeConfig
        from mmrm.rm.media import MediaPolicy

        policy = MediaPolicy(allowed_roots=[p.resolve() for p in self.media_roots])
        if self.backend == "hf":
            from mmrm.judges.backends.hf import HFJudgeBackend

            backend: Any = HFJudgeBackend(self.model, device=self.device, dtype=self.dtype, media_policy=policy)
        else:
            from mmrm.judges.backends.openai import (
                OpenAIBackendConfig,
                OpenAIJudgeBackend,
            )

            if not self.base_url:
                raise ValueError("an openai judge needs base_url")
            backend = OpenAIJudgeBackend(OpenAIBackendConfig(base_url=self.base_url, model=self.model))
        return JudgeScorer(Judge(self.rubric, backend, JudgeConfig(**self.config)))


class ServiceSpec(BaseModel):
    """A reward model (``model``) or judge (``judge``) of a running mmrm service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["service"] = "service"
    base_url: str
    model: str | None = None
    judge: str | None = None
    rubric: str | None = None
    token_env: str = Field(default="MMRM_API_TOKEN", description="Environment variable holding the bearer token.")
    batch_size: int = Field(default=32, ge=1)

    def key(self) -> str | None:
        return None  # the service's fingerprint is asked for in build()

    def build(self) -> ServiceScorer:
        import os

        from mmrm.rm.client import Client

        client = Client(base_url=self.base_url, token=os.environ.get(self.token_env) or None)
        return ServiceScorer(client, model=self.model, judge=self.judge, rubric=self.rubric, batch_size=self.batch_size)


ScorerSpec = Union[RewardModelSpec, JudgeSpec, ServiceSpec]


def spec_from_dict(data: dict[str, Any]) -> ScorerSpec:
    kind = data.get("type")
    cls = {"reward_model": RewardModelSpec, "judge": JudgeSpec, "service": ServiceSpec}.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown scorer spec type {kind!r}")
    return cls.model_validate(data)
