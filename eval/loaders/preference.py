"""Generic preference pairs: ``prompt`` (a string or chat messages), ``chosen``, ``rejected`` (a
string, content parts or an assistant message), optional ``images`` (list) or ``image`` (one
reference) shown before a string prompt, ``id``, ``category`` and ``group`` (prompt group for Acc+).
JSONL, JSON, Parquet or ``datasets``. The digits demo's ``eval.jsonl`` is this format."""

from __future__ import annotations

from typing import Any

from mmrm.eval.items import EvalItem, Order
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions, media_key
from mmrm.eval.loaders.rows import Source, need

__all__ = ["load_preference"]


def _row(row: dict[str, Any], where: str) -> RowPair:
    need(row, ("prompt", "chosen", "rejected"), where, "preference rows (prompt, chosen, rejected; optional images, id, "
         "category, group)")
    rid = str(row["id"]) if "id" in row else where.split()[-1]
    refs = row.get("images") or ([row["image"]] if row.get("image") else [])
    prompt = row["prompt"]
    return RowPair(source_id=rid, prompt=prompt if isinstance(prompt, str) else list(prompt),
                   chosen=row["chosen"], rejected=row["rejected"], category=str(row.get("category") or "all"),
                   group=str(row["group"]) if row.get("group") is not None else None,
                   key_parts=(prompt, row["chosen"], row["rejected"], [media_key(r) for r in refs]),
                   # images are shown before a string prompt only (chat messages carry their own parts)
                   prompt_media=tuple(("image", r) for r in refs if r) if isinstance(prompt, str) else ())


def load_preference(
    source: Source,
    *,
    benchmark: str = "preference",
    media: MediaOptions | None = None,
    order: Order = "random",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """Generic preference rows -> items (see the module docs for the fields)."""
    return assemble(benchmark, source, _row, media=media, order=order, seed=seed, limit=limit)
