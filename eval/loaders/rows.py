"""Reading a benchmark file into rows, and refusing a row of the wrong shape."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from mmrm.rm.errors import InvalidInput

__all__ = ["Source", "default_root", "need", "read_rows"]

Source = Union[str, Path, Iterable[Mapping[str, Any]], Any]  # a path, rows, or a datasets.Dataset


def read_rows(source: Source) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON-array / Parquet file, a saved ``datasets`` folder, a ``datasets.Dataset``,
    or an iterable of dicts."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                raise InvalidInput(f"{p} holds several splits {sorted(ds)}; pass one split's folder", field="source")
            return [dict(r) for r in ds]
        if not p.is_file():
            raise InvalidInput(f"benchmark file {p} does not exist", field="source")
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
        if suffix == ".json" or text.lstrip().startswith("["):
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise InvalidInput(f"{p}: expected a JSON array of rows", field="source")
            return [dict(r) for r in data]
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"{p}:{n}: not JSON: {e}", field="source") from e
        return rows
    return [dict(r) for r in source]


def default_root(source: Source) -> Path | None:
    """The folder relative media paths of ``source`` are read from (the data file's folder)."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        return p if p.is_dir() else p.parent
    return None


def need(row: Mapping[str, Any], fields: tuple[str, ...], where: str, release: str | None = None) -> None:
    """Refuse ``row`` unless it has every one of ``fields``; the message names the missing ones and,
    with ``release``, the release format that was expected."""
    missing = [f for f in fields if f not in row]
    if missing:
        expected = f"; expected {release}" if release else ""
        raise InvalidInput(f"{where}: missing field(s) {missing}; has {sorted(row)}{expected}", field=where,
                           limit=list(fields))
