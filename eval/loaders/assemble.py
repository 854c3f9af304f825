"""The one assembly path of every loader: a loader says how one row maps to a :class:`RowPair`;
:func:`assemble` does the rest (the ``limit``, pair keys, presentation order, media resolution,
placeholders and the missing-media refusal) the same way for every benchmark.

``limit`` is applied to the rows first: a row beyond it is neither validated nor read for media, so
a missing image there is no error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mmrm.eval.items import EvalItem, KeyMaker, Order, Side, chosen_side, make_pair
from mmrm.eval.loaders.media import MediaOptions, MediaResolver
from mmrm.eval.loaders.rows import Source, default_root, read_rows
from mmrm.rm.errors import InvalidInput
from mmrm.rm.types import Message, as_response

__all__ = ["RowPair", "assemble", "user_turn"]

MediaRef = tuple[Literal["image", "video"], Any]


@dataclass(frozen=True)
class RowPair:
    """What one benchmark row means, before any media is read."""

    source_id: str
    #: the user's text (shown after ``prompt_media``), or chat messages whose parts may hold media
    prompt: str | Sequence[Mapping[str, Any]]
    #: a string, content parts, or an assistant message (media parts are resolved like the prompt's)
    chosen: Any
    rejected: Any
    category: str
    #: what the pair key hashes beside the id (see :mod:`mmrm.eval.items`); media by reference
    key_parts: tuple[Any, ...]
    prompt_media: tuple[MediaRef, ...] = ()
    subset: str | None = None
    group: str | None = None
    #: where the chosen response sits in the benchmark's own order (for ``order="as_stored"``)
    stored: Side = "a"
    meta: dict[str, Any] = field(default_factory=dict)


RowMapper = Callable[[dict[str, Any], str], RowPair]


def user_turn(text: str, media_parts: list[dict[str, Any]]) -> list[Message]:
    """One user message: the media parts, then the text."""
    if not media_parts:
        return [Message(role="user", content=text)]
    return [Message.model_validate({"role": "user", "content": [*media_parts, {"type": "text", "text": text}]})]


def _response(res: MediaResolver, value: Any, used: list[str]) -> Message:
    """A response given as a string, content parts or a message, with local media resolved."""
    if isinstance(value, list):
        value = res.parts_in([{"content": value}], used)[0]["content"]
    elif isinstance(value, Mapping) and isinstance(value.get("content"), list):
        value = res.parts_in([dict(value)], used)[0]
    return as_response(value)


def assemble(
    benchmark: str,
    source: Source,
    row_to_pair: RowMapper,
    *,
    media: MediaOptions | None,
    order: Order,
    seed: int,
    limit: int | None,
    rows: list[dict[str, Any]] | None = None,
) -> list[EvalItem]:
    """Items of ``source`` (or of ``rows`` already read from it), one per row, in file order."""
    if limit is not None and limit < 0:
        raise InvalidInput(f"limit must be >= 0, got {limit}", field="limit")
    all_rows = read_rows(source) if rows is None else rows
    kept = all_rows if limit is None else all_rows[:limit]
    res = MediaResolver(media, default_root(source), benchmark)
    keys = KeyMaker()
    items = []
    for i, row in enumerate(kept):
        where = f"row {i}"
        rp = row_to_pair(row, where)
        key = keys(rp.source_id, *rp.key_parts)
        used: list[str] = []
        try:
            parts = [res.image(v, used) if kind == "image" else res.video(v, used) for kind, v in rp.prompt_media]
            if isinstance(rp.prompt, str):
                prompt = user_turn(rp.prompt, parts)
            else:
                prompt = [Message.model_validate(m) for m in res.parts_in([dict(m) for m in rp.prompt], used)]
            chosen, rejected = _response(res, rp.chosen, used), _response(res, rp.rejected, used)
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e.message}", field=e.field or where, limit=e.limit) from e
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"{where}: {e}", field=where) from e
        side = chosen_side(order, key, seed, stored=rp.stored)
        items.append(EvalItem(benchmark=benchmark, key=key, source_id=rp.source_id, index=i,
                              pair=make_pair(prompt, chosen, rejected, side), chosen=side, category=rp.category,
                              subset=rp.subset, group=rp.group, placeholder_media=used, meta=rp.meta))
    res.finish(len(kept))
    return items
