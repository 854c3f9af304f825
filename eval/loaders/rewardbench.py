"""RewardBench v1 (allenai/reward-bench; text-only ``prompt, chosen, rejected, subset, id``: JSONL,
Parquet, or a ``datasets`` dataset). Category = section, subset = RewardBench subset."""

from __future__ import annotations

from typing import Any

from mmrm.eval.items import EvalItem, Order
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions
from mmrm.eval.loaders.rows import Source, need

__all__ = ["REWARDBENCH_EXAMPLE_COUNTS", "REWARDBENCH_SECTIONS", "load_rewardbench"]

#: Example counts used by RewardBench's own section scoring (``EXAMPLE_COUNTS``), as in the current
#: allenai/reward-bench (xstest counts fixed in its PR #175; ``math-prm`` is up-weighted to 984, its
#: own comment: "actual length 447, upweighting to be equal to code").
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}

#: RewardBench's four sections (``SUBSET_MAPPING``).
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
_RB_SECTION_OF = {s: sec for sec, subs in REWARDBENCH_SECTIONS.items() for s in subs}


def _row(row: dict[str, Any], where: str) -> RowPair:
    need(row, ("prompt", "chosen", "rejected", "subset"), where,
         "RewardBench's filtered split (prompt, chosen, rejected, subset, id)")
    rid = str(row["id"]) if "id" in row else where.split()[-1]
    return RowPair(source_id=rid, prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"],
                   category=_RB_SECTION_OF.get(row["subset"], "other"), subset=row["subset"],
                   key_parts=(row["prompt"], row["chosen"], row["rejected"], row["subset"]))


def load_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """RewardBench (v1, text-only) rows -> items; category = section, subset = RewardBench subset.

    Subsets outside the 23 of the four sections (the prior preference sets) get category ``other``
    and do not enter the section scores.
    """
    del media  # text-only
    return assemble("rewardbench", source, _row, media=None, order=order, seed=seed, limit=limit)
