"""Preference data -> the one input type.

Accepted: JSONL, Parquet, or a ``datasets.Dataset``, with one row per pair::

    {"prompt": str | messages, "chosen": str | parts | message, "rejected": ...,
     "images": [source, ...] (optional), "margin": float (optional)}

``images`` are put, in order, at the start of the first user turn. Local image paths are relative
to the data file's folder; that folder is added to the allowed media roots, so nothing else on
disk can be read through a data file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mmrm.rm.errors import InvalidInput
from mmrm.rm.types import Message, Pair


@dataclass(frozen=True)
class PreferencePair:
    """A training pair: ``pair.response_a`` is the chosen response, ``response_b`` the rejected one."""

    pair: Pair
    margin: float = 0.0


def _with_images(prompt: Any, images: list[str]) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        msgs: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    else:
        msgs = [m.model_dump() if isinstance(m, Message) else dict(m) for m in prompt]
    if not images:
        return msgs
    for m in msgs:
        if m["role"] == "user":
            content = m["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            m["content"] = [{"type": "image_url", "image_url": {"url": u}} for u in images] + parts
            return msgs
    raise InvalidInput("a row with images needs a user turn in its prompt", field="prompt")


def _resolve(source: str, base: Path | None) -> str:
    if base is None or source.startswith(("data:", "http://", "https://")) or len(source) > 1024:
        return source
    p = Path(source)
    return str(p if p.is_absolute() else (base / p))


def row_to_pair(row: dict[str, Any], *, base: Path | None = None, index: int = 0) -> PreferencePair:
    """Convert one data row; errors name the row and the field."""
    try:
        images = row.get("images") or []
        if isinstance(images, str):
            images = [images]
        images = [_resolve(s, base) for s in images]
        pair = Pair(prompt=_with_images(row["prompt"], images), response_a=row["chosen"], response_b=row["rejected"])
        margin = float(row.get("margin") or 0.0)
    except KeyError as e:
        raise InvalidInput(f"row {index} has no {e.args[0]!r} column", field=f"rows[{index}].{e.args[0]}") from e
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"row {index} is not a preference pair: {e}", field=f"rows[{index}]") from e
    return PreferencePair(pair=pair, margin=margin)


def load_pairs(source: str | Path | Iterable[dict[str, Any]]) -> list[PreferencePair]:
    """Load preference pairs from a JSONL / Parquet file or any iterable of rows (e.g. a Dataset)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        base = path.parent.resolve()
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows: Iterable[dict[str, Any]] = pq.read_table(path).to_pylist()
        else:
            rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    else:
        base, rows = None, source
    return [row_to_pair(dict(r), base=base, index=i) for i, r in enumerate(rows)]
