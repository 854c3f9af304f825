"""MJ-Bench (MJ-Bench/MJ-Bench; text-to-image judges): one split per perspective (``alignment``,
``safety``, ``quality``, ``bias``), rows ``caption, image0, image1, label`` as its dataset card
documents them (``label`` 0: ``image0`` is preferred; 1: ``image1``), read by the repository's
``inference.py`` (commit ``8a1f5db``) as ``example["caption"]``, ``example["image0"]``,
``example["image1"]``, ``example["label"]``. The card's newer rows also carry ``category`` and
``subcategory``.

A pair: the caption as the user's text, the two images as the two responses. Category: the
perspective (given as ``perspective=``, else the row's ``category``, else the file's path); subset:
``subcategory`` where present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrm.eval.items import EvalItem, Order
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions, media_key
from mmrm.eval.loaders.rows import Source, need
from mmrm.rm.errors import InvalidInput

__all__ = ["MJ_BENCH_PERSPECTIVES", "load_mj_bench"]

MJ_BENCH_PERSPECTIVES = ("alignment", "safety", "quality", "bias")


def _perspective_of(source: Source, perspective: str | None) -> str | None:
    if perspective is not None:
        if perspective not in MJ_BENCH_PERSPECTIVES:
            raise InvalidInput(f"unknown MJ-Bench perspective {perspective!r}", field="perspective",
                               limit=list(MJ_BENCH_PERSPECTIVES))
        return perspective
    if isinstance(source, (str, Path)):
        p = Path(source)
        for name in [p.stem, *(q.name for q in p.parents)]:
            for known in MJ_BENCH_PERSPECTIVES:
                if name.lower().startswith(known):
                    return known
    return None


def _mapper(perspective: str | None):  # noqa: ANN202 - a RowMapper
    def row_to_pair(row: dict[str, Any], where: str) -> RowPair:
        need(row, ("caption", "image0", "image1", "label"), where,
             "MJ-Bench's split rows (caption, image0, image1, label; MJ-Bench/MJ-Bench dataset card)")
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            label = -1
        if label not in (0, 1) or float(row["label"]) != label:
            raise InvalidInput(f"{where}: label must be 0 (image0 preferred) or 1 (image1), got {row['label']!r}",
                               field=f"{where}.label", limit=[0, 1])
        category = perspective or row.get("category")
        if not category:
            raise InvalidInput(f"{where}: no perspective; pass perspective= (--perspective) or give rows a category",
                               field="perspective", limit=list(MJ_BENCH_PERSPECTIVES))
        images = [row["image0"], row["image1"]]
        chosen, rejected = images[label], images[1 - label]

        def response(value: Any) -> dict[str, Any]:
            return {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": value}}]}

        rid = str(row["id"]) if row.get("id") is not None else where.split()[-1]
        return RowPair(source_id=rid, prompt=row["caption"], chosen=response(chosen), rejected=response(rejected),
                       category=str(category).lower(), subset=row.get("subcategory") or None,
                       stored="a" if label == 0 else "b",
                       key_parts=(row["caption"], media_key(row["image0"]), media_key(row["image1"]), label))
    return row_to_pair


def load_mj_bench(
    source: Source,
    *,
    perspective: str | None = None,
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """MJ-Bench (one perspective's split) -> items; category = the perspective."""
    return assemble("mj-bench", source, _mapper(_perspective_of(source, perspective)), media=media, order=order,
                    seed=seed, limit=limit)
