"""Multimodal RewardBench (facebookresearch/multimodal_rewardbench, ``data/all_data.json``): one JSON
array of ``ID, Text, Image, Output1, Output2, Better, Category``.

Categories are those of the official ``scripts/2_get_accuracy.py`` (commit ``3366b34``):
``Category``, with ``safety`` split into bias (``ID`` starts with ``pairs``) / toxicity and
``reasoning`` into math (``ID`` starts with ``math``) / coding.
"""

from __future__ import annotations

from typing import Any

from mmrm.eval.items import EvalItem, Order, Side
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions, media_key
from mmrm.eval.loaders.rows import Source, need
from mmrm.rm.errors import InvalidInput

__all__ = ["MMRB_CATEGORIES", "load_multimodal_rewardbench", "mmrb_category"]

MMRB_CATEGORIES = (
    "open_generation/correctness_task", "open_generation/preference_task", "knowledge",
    "reasoning/math", "reasoning/coding", "safety/bias", "safety/toxicity", "vqa",
)


def mmrb_category(row_id: str, category: str) -> str:
    """The category the official ``scripts/2_get_accuracy.py`` reports a row under."""
    if category == "safety":
        return "safety/bias" if row_id.lower().startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if row_id.lower().startswith("math") else "reasoning/coding"
    return category


def _row(row: dict[str, Any], where: str) -> RowPair:
    need(row, ("ID", "Text", "Image", "Output1", "Output2", "Better"), where,
         "Multimodal RewardBench's data/all_data.json (ID, Text, Image, Output1, Output2, Better, Category)")
    better = row["Better"]
    if better not in ("Output1", "Output2"):
        raise InvalidInput(f"{where}: Better must be 'Output1' or 'Output2', got {better!r}", field=f"{where}.Better",
                           limit=["Output1", "Output2"])
    raw_cat = row.get("Category") or (row.get("Meta") or {}).get("Category")
    if not raw_cat:
        raise InvalidInput(f"{where}: no Category", field=f"{where}.Category")
    stored: Side = "a" if better == "Output1" else "b"
    chosen, rejected = (row["Output1"], row["Output2"]) if stored == "a" else (row["Output2"], row["Output1"])
    image = row["Image"]
    return RowPair(source_id=str(row["ID"]), prompt=row["Text"], chosen=chosen, rejected=rejected,
                   category=mmrb_category(str(row["ID"]), raw_cat), subset=raw_cat, stored=stored,
                   key_parts=(row["Text"], row["Output1"], row["Output2"], better, media_key(image)),
                   prompt_media=(("image", image),) if image else ())


def load_multimodal_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "as_stored",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """Multimodal RewardBench's JSON array -> items. ``as_stored`` shows Output1 as A, Output2 as B,
    exactly as the official judge script; ``Better`` says which one humans preferred."""
    return assemble("multimodal-rewardbench", source, _row, media=media, order=order, seed=seed, limit=limit)
