"""mmrm: multimodal reward models and LMM-as-judge scoring.

The public face of the package::

    from mmrm import RewardModel, Judge, Panel, Client, AsyncClient, RewardFn, MediaPolicy, Sample, Pair, Group

Every name is a lazy attribute: ``import mmrm`` imports neither torch nor Ray (tested); the module
that defines a name is imported the first time the name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mmrm.rm.version import __version__

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # core: inputs, results, errors, media policy, the reward model
    "Sample": "mmrm.rm.types",
    "Pair": "mmrm.rm.types",
    "Group": "mmrm.rm.types",
    "Message": "mmrm.rm.types",
    "ScoreResult": "mmrm.rm.types",
    "Provenance": "mmrm.rm.types",
    "GroupResult": "mmrm.rm.scorer",
    "Scorer": "mmrm.rm.scorer",
    "MmrmError": "mmrm.rm.errors",
    "MediaPolicy": "mmrm.rm.media",
    "RewardModel": "mmrm.rm.reward_model",
    "ScoringOptions": "mmrm.rm.options",
    # generative judges
    "Judge": "mmrm.judges.judge",
    "Panel": "mmrm.judges.panel",
    "load_rubric": "mmrm.judges.rubrics",
    # the HTTP client
    "Client": "mmrm.client.sync_client",
    "AsyncClient": "mmrm.client.async_client",
    "RemoteScorer": "mmrm.client.remote",
    "ServiceError": "mmrm.client.errors",
    # RL
    "RewardFn": "mmrm.rl.reward_fn",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmrm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from mmrm.client.async_client import AsyncClient
    from mmrm.client.errors import ServiceError
    from mmrm.client.remote import RemoteScorer
    from mmrm.client.sync_client import Client
    from mmrm.judges.judge import Judge
    from mmrm.judges.panel import Panel
    from mmrm.judges.rubrics import load_rubric
    from mmrm.rl.reward_fn import RewardFn
    from mmrm.rm.errors import MmrmError
    from mmrm.rm.media import MediaPolicy
    from mmrm.rm.options import ScoringOptions
    from mmrm.rm.reward_model import RewardModel
    from mmrm.rm.scorer import GroupResult, Scorer
    from mmrm.rm.types import Group, Message, Pair, Provenance, Sample, ScoreResult
