"""The unit of offline evaluation: one preference pair of a benchmark, in the one input type.

Every loader turns its benchmark's rows into :class:`EvalItem` records: a :class:`~mmrm.rm.types.Pair`
in the order a scorer is shown it, which side humans preferred, the categories the benchmark reports,
and a stable key. Nothing downstream knows which benchmark a pair came from.

Pair keys (``EvalItem.key``) are assigned by the loader and are stable across runs and machines:
``<benchmark id>#<12 hex digits of a content hash>``. Benchmark ids alone are not unique keys
(VL-RewardBench's 1,250 rows carry 1,225 distinct ids; MM-RLHF's ids name prompt groups), so the
hash covers what is scored: prompt, chosen, rejected and media references. Rows identical in all
of these get ``~2``, ``~3``... in file order.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from typing import Any, Literal

from mmrm.rm.types import Message, Pair
from pydantic import BaseModel, ConfigDict, Field

Side = Literal["a", "b"]
#: How a loader orders a pair for the scorer. ``chosen_first`` keeps the human-preferred response as
#: A; ``random`` puts it at A or B by a seeded coin per pair key (stable across runs); ``swapped``
#: shows it as B; ``as_stored`` keeps a benchmark's own order (Multimodal RewardBench's Output1/2).
Order = Literal["as_stored", "chosen_first", "random", "swapped"]


class EvalItem(BaseModel):
    """One benchmark pair, ready to score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmark: str = Field(description="Benchmark name (a loader name, or the user's for generic files).")
    key: str = Field(description="Stable pair key, unique within the benchmark (see module docs).")
    source_id: str = Field(description="The benchmark's own id of the row (not unique).")
    index: int = Field(ge=0, description="Row position in the source file (official scorers iterate in this order).")
    pair: Pair = Field(description="The pair as the scorer sees it: response_a is shown first.")
    chosen: Side = Field(description="Which side humans preferred.")
    category: str = Field(description="The category the benchmark reports accuracy for.")
    subset: str | None = Field(default=None, description="Finer source/subset (RewardBench subset, VL-RewardBench source).")
    group: str | None = Field(default=None, description="Prompt group for Acc+ (pairs sharing a prompt).")
    placeholder_media: list[str] = Field(
        default_factory=list, description="Media references that were missing and replaced by generated placeholders."
    )
    meta: dict[str, Any] = Field(default_factory=dict, description="Loader extras (JSON-safe).")

    @property
    def chosen_response(self) -> Message:
        return self.pair.response_a if self.chosen == "a" else self.pair.response_b

    @property
    def rejected_response(self) -> Message:
        return self.pair.response_b if self.chosen == "a" else self.pair.response_a

    @property
    def has_media(self) -> bool:
        msgs = [*self.pair.prompt, self.pair.response_a, self.pair.response_b]
        return any(m.media for m in msgs)

    @property
    def uses_placeholders(self) -> bool:
        return bool(self.placeholder_media)


def content_hash(*parts: Any) -> str:
    """12 hex digits of a sha256 over a canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


class KeyMaker:
    """Assigns ``<id>#<hash>`` keys, numbering repeats of identical content (``~2``, ``~3``)."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def __call__(self, source_id: str, *content: Any) -> str:
        base = f"{source_id}#{content_hash(*content)}"
        self._seen[base] += 1
        n = self._seen[base]
        return base if n == 1 else f"{base}~{n}"


def chosen_side(order: Order, key: str, seed: int, *, stored: Side = "a") -> Side:
    """Where the chosen response is shown for ``order`` (``random``: a seeded coin per key)."""
    if order == "as_stored":
        return stored
    if order == "chosen_first":
        return "a"
    if order == "swapped":
        return "b"
    coin = random.Random(f"{seed}:{key}").random()
    return "a" if coin < 0.5 else "b"


def make_pair(prompt: list[Message], chosen: Message, rejected: Message, side: Side) -> Pair:
    if side == "a":
        return Pair(prompt=prompt, response_a=chosen, response_b=rejected)
    return Pair(prompt=prompt, response_a=rejected, response_b=chosen)
