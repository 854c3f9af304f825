"""MM-RLHF-RewardBench (JSONL ``id, image`` or ``video, prompt, chosen, rejected``; the r1_reward copy).

Rows sharing an ``id`` are pairs of one prompt group (Acc+). Categories: the official scorer's
keywords, tried in order against the row's image or video path (first match wins).
"""

from __future__ import annotations

from typing import Any

from mmrm.eval.items import EvalItem, Order
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions
from mmrm.eval.loaders.rows import Source, need
from mmrm.rm.errors import InvalidInput

__all__ = ["MMRLHF_CATEGORIES", "load_mm_rlhf_rewardbench"]

MMRLHF_CATEGORIES = ("mcq", "long", "short", "safety", "video")


def _row(row: dict[str, Any], where: str) -> RowPair:
    need(row, ("id", "prompt", "chosen", "rejected"), where,
         "an MM-RLHF-RewardBench row (id, image or video, prompt, chosen, rejected)")
    image, video = row.get("image") or "", row.get("video") or ""
    if not image and not video:
        raise InvalidInput(f"{where}: neither 'image' nor 'video' is set", field=f"{where}.image")
    ref = image or video
    return RowPair(source_id=str(row["id"]), prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"],
                   category=next((k for k in MMRLHF_CATEGORIES if k in ref), "other"),
                   subset="video" if video else "image", group=str(row["id"]),
                   key_parts=(row["prompt"], row["chosen"], row["rejected"], ref),
                   prompt_media=(("image" if image else "video", ref),))


def load_mm_rlhf_rewardbench(
    source: Source,
    *,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """MM-RLHF-RewardBench rows -> items; rows sharing an ``id`` form one prompt group (Acc+)."""
    return assemble("mm-rlhf-rewardbench", source, _row, media=media, order=order, seed=seed, limit=limit)
