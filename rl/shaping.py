"""Reward shaping for RL: the ONE place where raw scores become the rewards a trainer sees.

Every adapter (TRL, verl, OpenRLHF guidance) and :class:`mmrm.rl.reward_fn.RewardFn` call
:func:`apply_shaping`; nothing else changes a reward. The steps run in this fixed order, each off
unless configured:

1. **hybrid with a verifiable reward** (BaseReward's RL recipe): for an item with a verifier result
   ``m`` (``I(match)``: 1 when the response matches its reference, else 0),
   ``r = I(match) + (1 - I(match)) * sigmoid(r)``. A correct answer gets 1, anything else gets the
   reward model's opinion squashed into (0, 1), so a wrong answer never outscores a right one. An
   item with no reference (verifier result ``None``) counts as no match: ``sigmoid(r)``.
2. **length penalty**: ``r -= length_penalty * max(0, L - length_target)``, ``L`` the response length
   in ``length_unit`` (characters or whitespace-separated words of the response text).
3. **clipping** to ``[clip_min, clip_max]`` (either bound may be absent).
4. **group normalization** (GRPO): ``(r - mean) / (std + eps)`` over the VALID items of each group,
   mean and POPULATION std (``ddof=0``) over the whole group: :func:`mmrm.rm.normalize.group_normalize`,
   the pinned formula. A group of one (G=1), or of equal rewards, normalizes to 0.0.

Failed items (``None``) stay ``None`` through every step and are left out of group statistics; what
an adapter then does with them is its documented failure policy, never a silent 0.

Each call returns a :class:`ShapingLog` (counts and means before and after) that callers log in one
line and hand to their trainer's metrics.

>>> s = Shaping(clip_max=1.0, group_normalize=True)
>>> out = apply_shaping([0.5, 3.0, None, 2.0], s, groups=["a", "a", "a", "b"])
>>> [None if v is None else round(v, 4) for v in out.rewards]
[-1.0, 1.0, None, 0.0]
>>> out.log.clipped, out.log.invalid, out.log.groups
(2, 1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from mmrm.rm.normalize import group_normalize
from mmrm.rm.results import (
    sigmoid,  # the one sigmoid (re-exported here for shaping users)
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Shaped", "Shaping", "ShapingLog", "apply_shaping", "response_length", "sigmoid"]


class Shaping(BaseModel):
    """How raw scores become rewards (see the module doc for the fixed order of the steps).

    The default shapes nothing: rewards are the scorer's raw values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Parameters that control the hybrid with a verifiable reward
    hybrid: bool = Field(
        default=False,
        description="r = I(match) + (1 - I(match)) * sigmoid(r) where a verifier result is given (BaseReward's RL "
        "recipe). Needs a verifier and references; an item without a reference counts as no match.",
    )
    # Parameters that control the length penalty
    length_penalty: float = Field(default=0.0, ge=0.0, description="Reward subtracted per unit of length over target.")
    length_target: int = Field(default=0, ge=0, description="Length (in length_unit) allowed before the penalty starts.")
    length_unit: Literal["chars", "words"] = Field(
        default="words", description="Unit of response length: characters, or whitespace-separated words.")
    # Parameters that control clipping
    clip_min: float | None = Field(default=None, allow_inf_nan=False, description="Lower bound of the reward (None: none).")
    clip_max: float | None = Field(default=None, allow_inf_nan=False, description="Upper bound of the reward (None: none).")
    # Parameters that control group normalization
    group_normalize: bool = Field(
        default=False,
        description="(r - mean) / (std + eps) per group, population std over the group's valid items. Leave off for "
        "TRL: its GRPOTrainer normalizes per group itself after gathering completions from every process.",
    )
    eps: float = Field(default=1e-6, gt=0, le=1, description="Epsilon of the group normalization.")

    @model_validator(mode="after")
    def _check(self) -> Shaping:
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ValueError(f"clip_min ({self.clip_min}) must not exceed clip_max ({self.clip_max}); swap them")
        return self

    @property
    def is_identity(self) -> bool:
        """True when no step is on (rewards equal raw values)."""
        return self == Shaping()


@dataclass(frozen=True)
class ShapingLog:
    """What one shaping call did: counts, and means over the valid items before and after."""

    items: int
    invalid: int
    raw_mean: float | None
    raw_std: float | None
    reward_mean: float | None
    reward_std: float | None
    matched: int = 0
    clipped: int = 0
    length_penalized: int = 0
    length_penalty_mean: float = 0.0
    groups: int = 0
    singleton_groups: int = 0
    steps: tuple[str, ...] = ()

    def metrics(self, prefix: str = "mmrm/") -> dict[str, float]:
        """Scalars for a trainer's metric log: failures always; raw/shaped means when there is a valid
        item; each step's own count only when that step is on.

        >>> apply_shaping([1.0, None], Shaping(clip_max=0.5)).log.metrics()
        {'mmrm/invalid': 1.0, 'mmrm/invalid_fraction': 0.5, 'mmrm/raw_mean': 1.0, 'mmrm/reward_mean': 0.5, 'mmrm/clipped': 1.0}
        """
        out = {"invalid": float(self.invalid), "invalid_fraction": self.invalid / self.items if self.items else 0.0}
        if self.raw_mean is not None:
            out["raw_mean"] = self.raw_mean
        if self.reward_mean is not None and self.steps:
            out["reward_mean"] = self.reward_mean
        per_step = {"hybrid": ("matched", self.matched), "clip": ("clipped", self.clipped),
                    "length_penalty": ("length_penalty_mean", self.length_penalty_mean),
                    "group_normalize": ("singleton_groups", self.singleton_groups)}
        for step in self.steps:
            k, v = per_step[step]
            out[k] = float(v)
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def line(self) -> str:
        """One human-readable log line."""
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.4g}"

        parts = [f"items={self.items}", f"invalid={self.invalid}", f"raw_mean={f(self.raw_mean)}",
                 f"reward_mean={f(self.reward_mean)}"]
        if self.matched:
            parts.append(f"matched={self.matched}")
        if self.clipped:
            parts.append(f"clipped={self.clipped}")
        if self.length_penalized:
            parts.append(f"length_penalized={self.length_penalized} (mean {self.length_penalty_mean:.4g})")
        if self.groups:
            parts.append(f"groups={self.groups} (G=1: {self.singleton_groups})")
        return " ".join(parts)


@dataclass(frozen=True)
class Shaped:
    """The shaped rewards (``None`` where the item failed) and the log of the call."""

    rewards: list[float | None]
    log: ShapingLog


def response_length(text: str, unit: Literal["chars", "words"]) -> int:
    """Length of a response text in ``unit``.

    >>> response_length("two words", "words"), response_length("two words", "chars")
    (2, 9)
    """
    return len(text) if unit == "chars" else len(text.split())


def _steps(s: Shaping) -> tuple[str, ...]:
    on = (("hybrid", s.hybrid), ("length_penalty", s.length_penalty > 0),
          ("clip", s.clip_min is not None or s.clip_max is not None), ("group_normalize", s.group_normalize))
    return tuple(name for name, is_on in on if is_on)


def _mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def apply_shaping(
    raw: Sequence[float | None],
    shaping: Shaping,
    *,
    matches: Sequence[bool | None] | None = None,
    texts: Sequence[str] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> Shaped:
    """Shape raw rewards (``None`` = failed item) as ``shaping`` says.

    Args:
        raw: the scorer's values, one per item; ``None`` for a failed item.
        matches: per item, the verifier's verdict (``None``: no reference). Required by ``hybrid``.
        texts: per item, the response text. Required by a length penalty.
        groups: per item, a group key (items with equal keys form one group). Required by
            ``group_normalize``.

    Raises:
        ValueError: a step is on but its per-item input is missing or of the wrong length.
    """
    n = len(raw)
    for name, seq, needed in (("matches", matches, shaping.hybrid), ("texts", texts, shaping.length_penalty > 0),
                              ("groups", groups, shaping.group_normalize)):
        if needed and seq is None:
            raise ValueError(f"shaping needs {name} (one per item) for the step that is on; pass {name}=")
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} rewards; give one per item")
    for i, r in enumerate(raw):
        if r is not None and not math.isfinite(r):
            raise ValueError(f"raw reward {i} is {r}; a failed item must be None, not a non-finite number")

    vals: list[float | None] = [None if r is None else float(r) for r in raw]
    matched = clipped = penalized = 0
    penalties: list[float] = []
    if shaping.hybrid:
        assert matches is not None
        for i, r in enumerate(vals):
            if r is None:
                continue
            hit = bool(matches[i])
            matched += hit
            vals[i] = 1.0 if hit else sigmoid(r)
    if shaping.length_penalty > 0:
        assert texts is not None
        for i, r in enumerate(vals):
            if r is None:
                continue
            over = max(0, response_length(texts[i], shaping.length_unit) - shaping.length_target)
            p = shaping.length_penalty * over
            penalties.append(p)
            if p:
                penalized += 1
                vals[i] = r - p
    if shaping.clip_min is not None or shaping.clip_max is not None:
        lo = -math.inf if shaping.clip_min is None else shaping.clip_min
        hi = math.inf if shaping.clip_max is None else shaping.clip_max
        for i, r in enumerate(vals):
            if r is not None and not lo <= r <= hi:
                clipped += 1
                vals[i] = min(hi, max(lo, r))
    n_groups = singletons = 0
    if shaping.group_normalize:
        assert groups is not None
        members: dict[Hashable, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        n_groups = len(members)
        for idx in members.values():
            ok = [i for i in idx if vals[i] is not None]
            singletons += len(ok) == 1
            for i, z in zip(ok, group_normalize([vals[i] for i in ok], eps=shaping.eps)):  # type: ignore[misc]
                vals[i] = z

    valid_raw = [r for r in raw if r is not None]
    valid = [v for v in vals if v is not None]
    raw_mean, raw_std = _mean_std(valid_raw)  # type: ignore[arg-type]
    mean, std = _mean_std(valid)
    log = ShapingLog(
        items=n, invalid=n - len(valid), raw_mean=raw_mean, raw_std=raw_std, reward_mean=mean, reward_std=std,
        matched=matched, clipped=clipped, length_penalized=penalized,
        length_penalty_mean=sum(penalties) / len(penalties) if penalties else 0.0,
        groups=n_groups, singleton_groups=singletons, steps=_steps(shaping),
    )
    return Shaped(rewards=vals, log=log)
