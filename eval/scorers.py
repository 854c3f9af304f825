"""What the eval runner scores with: any :class:`~mmrm.rm.scorer.Scorer`, and the key its results
are stored under.

The runner calls ``scorer.compare(pairs)``: a reward model in process (either engine), a judge
(both orders, debiased), a panel, or a served model or judge through
:class:`~mmrm.client.RemoteScorer`. There are no per-kind wrappers; what identifies a scorer is
its :attr:`~mmrm.rm.scorer.Scorer.provenance`. The **scorer key** is a hash of the parts of it that
determine the scores (kind, engine, fingerprint of the checkpoint or of rubric + backend + judge
config, dtype), so stored results are reused exactly when they would come out the same, and a
checkpoint served by mmrm shares its key with the same checkpoint in process.

Specs (:class:`RewardModelSpec`, :class:`JudgeSpec`, :class:`ServiceSpec`) are plain data that build a
scorer where it runs: in this process, or once per Ray actor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal, Union

from mmrm.rm.options import ModelOptions
from mmrm.rm.scorer import Scorer
from mmrm.rm.types import Provenance
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "JudgeSpec",
    "RewardModelSpec",
    "Scorer",
    "ScorerSpec",
    "ServiceSpec",
    "describe_scorer",
    "descriptor",
    "scorer_key",
]

log = logging.getLogger(__name__)

#: fingerprints that identify nothing: results cannot be keyed by them.
_NO_FINGERPRINT = ("unsaved", "unknown")


def _hash(descriptor: dict[str, Any]) -> str:
    """16 hex digits of a sha256 over a canonical JSON of ``descriptor``."""
    blob = json.dumps(descriptor, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def descriptor(provenance: Provenance) -> dict[str, Any]:
    """What the scorer key is made of: the provenance fields that determine the scores (not the
    scorer's display name, nor the mmrm version)."""
    return {"kind": provenance.kind, "engine": provenance.engine, "fingerprint": provenance.fingerprint,
            "dtype": provenance.dtype}


def scorer_key(scorer: Scorer) -> str:
    """The key ``scorer``'s results are stored under (see the module docstring)."""
    from mmrm.rm.errors import ConfigError

    prov = scorer.provenance
    if prov.fingerprint in _NO_FINGERPRINT:
        raise ConfigError(f"scorer {prov.scorer!r} has no fingerprint ({prov.fingerprint}) to key results by; save the "
                          "reward model (save_pretrained) or pass key= to the runner", field="key")
    return _hash(descriptor(prov))


def describe_scorer(scorer: Scorer, key: str | None = None) -> dict[str, Any]:
    """The scorer as reports show it: its name, its key and what the key was made of."""
    prov = scorer.provenance
    return {"name": prov.scorer, "key": key or scorer_key(scorer), **descriptor(prov)}


# --------------------------------------------------------------------------------------------------
# Specs: serializable recipes that build a scorer where it runs (this process, or a Ray actor).


class RewardModelSpec(ModelOptions):
    """A reward checkpoint scored in-process: the checkpoint, the folders its media may come from,
    and the :class:`~mmrm.rm.options.ModelOptions` fields it loads with (``device: auto``: a Ray
    actor with a GPU gets cuda)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reward_model"] = "reward_model"
    checkpoint: Path = Field(description="Reward checkpoint directory (mmrm format or seq-classification).")
    media_roots: list[Path] = Field(default_factory=list, description="Folders local media may be read from.")

    def descriptor(self) -> dict[str, Any]:
        """What the scorer key is made of, without loading the model (the checkpoint's fingerprint):
        the same as :func:`descriptor` of the built model's provenance."""
        from mmrm.rm import checkpoint as ckpt

        return {"kind": "reward_model", "engine": self.engine, "fingerprint": ckpt.fingerprint(self.checkpoint),
                "dtype": self.dtype if self.engine == "hf" else None}

    def key(self) -> str:
        """The scorer key without loading the model."""
        return _hash(self.descriptor())

    def describe(self) -> dict[str, Any]:
        """As :func:`describe_scorer` of the built model, without loading it."""
        return {"name": self.checkpoint.name, "key": self.key(), **self.descriptor()}

    def build(self) -> Scorer:
        """The :class:`~mmrm.rm.reward_model.RewardModel` (imports torch)."""
        from mmrm.rm.media import MediaPolicy
        from mmrm.rm.options import ScoringOptions
        from mmrm.rm.reward_model import RewardModel

        options = ScoringOptions(**self.model_dump(include=set(ModelOptions.model_fields)),
                                 media_policy=MediaPolicy(allowed_roots=[p.resolve() for p in self.media_roots]))
        return RewardModel.from_pretrained(self.checkpoint, options=options)


class JudgeSpec(BaseModel):
    """A judge: a rubric on an in-process transformers model (``hf``) or an OpenAI-compatible server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["judge"] = "judge"
    rubric: str
    backend: Literal["hf", "openai"] = "hf"
    model: str = Field(description="hf: checkpoint directory; openai: the served model name.")
    base_url: str | None = Field(default=None, description="openai: the server's /v1 URL.")
    device: str = Field(default="auto", description="hf: auto (CUDA when there is one, else the CPU), cpu, cuda[:N].")
    dtype: str = "float32"
    media_roots: list[Path] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict, description="JudgeOptions fields.")

    def key(self) -> str | None:
        return None  # a judge's fingerprint needs its backend; build() computes it

    def build(self) -> Scorer:
        """The :class:`~mmrm.judges.Judge`."""
        from mmrm.judges import Judge, JudgeOptions
        from mmrm.rm.media import MediaPolicy

        policy = MediaPolicy(allowed_roots=[p.resolve() for p in self.media_roots])
        if self.backend == "hf":
            from mmrm.judges.backends.hf import HFJudgeBackend

            backend: Any = HFJudgeBackend(self.model, device=self.device, dtype=self.dtype, media_policy=policy)
        else:
            from mmrm.judges.backends.openai import OpenAIJudgeBackend

            if not self.base_url:
                raise ValueError("an openai judge needs base_url")
            backend = OpenAIJudgeBackend(self.model, base_url=self.base_url)
        return Judge(self.rubric, backend, JudgeOptions(**self.config))


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

    def build(self) -> Scorer:
        """A :class:`~mmrm.client.RemoteScorer` of the served model or judge."""
        import os

        from mmrm.client import Client, RemoteScorer

        if (self.model is None) == (self.judge is None):
            raise ValueError("give exactly one of model= (a reward model) and judge= (a served judge)")
        client = Client(base_url=self.base_url, token=os.environ.get(self.token_env) or None)
        return RemoteScorer(client, model=self.model, judge=self.judge, rubric=self.rubric, batch_size=self.batch_size)


ScorerSpec = Union[RewardModelSpec, JudgeSpec, ServiceSpec]


def spec_from_dict(data: dict[str, Any]) -> ScorerSpec:
    kind = data.get("type")
    cls = {"reward_model": RewardModelSpec, "judge": JudgeSpec, "service": ServiceSpec}.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown scorer spec type {kind!r}")
    return cls.model_validate(data)
