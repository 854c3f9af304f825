"""Multimodal RewardBench 2 (MMRB2; facebookresearch/MMRB2, dataset
``rl-research/multimodal-rewardbench-2``, CC BY-NC 4.0: no rows of it are vendored here).

Two release forms:

* the dataset's parquet, one config per task (``t2i``, ``edit``, ``interleaved``, ``reasoning``;
  1,000 pairs each): ``pair_id, prompt_text, prompt_images, response_a_text, response_a_images,
  response_b_text, response_b_images, chosen`` (``A``/``B``), ``prompt_source, prompt_metadata,
  response_a_model, response_b_model, human_annotations``. Texts hold ``<image_N>`` placeholders where
  their images go; a text without placeholders is followed by its images. This is how the
  repository's ``benchmark/build_from_hf.py`` (commit ``2ef90c7``) reads the rows back;
* the repository's task JSON (``benchmark/<task>.json``, what ``evaluate/compute_scores/
  compute_accuracy.py`` reads): ``{"pairs": [{"id", "prompt_content", "response_a":
  {"response_content"}, "response_b": {...}, "chosen"}]}``, contents as ``[["text", ...],
  ["image", "<path>"]]`` with paths relative to the JSON's folder.

The category is the task: given as ``task=``, else read from the file's path (``t2i/test-0.parquet``,
``edit.json``). Pairs are shown as stored (A, B): the official evaluation scores both orders itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmrm.eval.items import EvalItem, Order
from mmrm.eval.loaders.assemble import RowPair, assemble
from mmrm.eval.loaders.media import MediaOptions, media_key
from mmrm.eval.loaders.rows import Source, need, read_rows
from mmrm.rm.errors import InvalidInput

__all__ = ["MMRB2_TASKS", "load_mmrb2", "mmrb2_content"]

MMRB2_TASKS = ("t2i", "edit", "interleaved", "reasoning")
_PLACEHOLDER = re.compile(r"<image_(\d+)>")
_PARQUET = ("pair_id", "prompt_text", "prompt_images", "response_a_text", "response_a_images", "response_b_text",
            "response_b_images", "chosen")
_RELEASE = ("MMRB2's parquet (rl-research/multimodal-rewardbench-2: pair_id, prompt_text, prompt_images, response_a_text, "
            "response_a_images, response_b_text, response_b_images, chosen) or its benchmark/<task>.json pairs "
            "(id, prompt_content, response_a, response_b, chosen)")


def mmrb2_content(text: str | None, images: list[Any] | None) -> list[dict[str, Any]]:
    """Content parts of a text with ``<image_N>`` placeholders and its images, in order (images in
    list order at the placeholders; after the text when it has none)."""
    text, images = text or "", list(images or [])
    parts: list[dict[str, Any]] = []

    def img(value: Any) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": value}}

    if not _PLACEHOLDER.search(text):
        if text.strip():
            parts.append({"type": "text", "text": text.strip()})
        return parts + [img(v) for v in images]
    pieces = _PLACEHOLDER.split(text)
    k = 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        elif k < len(images):
            parts.append(img(images[k]))
            k += 1
    return parts


def _json_content(content: Any, where: str) -> list[dict[str, Any]]:
    parts = []
    for kind, value in content or []:
        if kind == "text":
            parts.append({"type": "text", "text": value})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": value}})
        else:
            raise InvalidInput(f"{where}: content part kind {kind!r} is neither text nor image", field=where)
    return parts


def _chosen_side(value: Any, where: str) -> str:
    side = str(value or "").strip().upper()
    if side not in ("A", "B"):
        raise InvalidInput(f"{where}: chosen must be 'A' or 'B', got {value!r}", field=f"{where}.chosen", limit=["A", "B"])
    return side


def _mapper(task: str):  # noqa: ANN202 - a RowMapper
    def row_to_pair(row: dict[str, Any], where: str) -> RowPair:
        if "pair_id" in row:
            need(row, _PARQUET, where, _RELEASE)
            rid = str(row["pair_id"])
            prompt = mmrb2_content(row["prompt_text"], row["prompt_images"])
            a = mmrb2_content(row["response_a_text"], row["response_a_images"])
            b = mmrb2_content(row["response_b_text"], row["response_b_images"])
            subset = row.get("prompt_source") or None
        else:
            need(row, ("id", "prompt_content", "response_a", "response_b", "chosen"), where, _RELEASE)
            rid = str(row["id"])
            prompt = _json_content(row["prompt_content"], f"{where}.prompt_content")
            a = _json_content((row["response_a"] or {}).get("response_content"), f"{where}.response_a")
            b = _json_content((row["response_b"] or {}).get("response_content"), f"{where}.response_b")
            subset = row.get("prompt_source") or None
        side = _chosen_side(row["chosen"], where)
        chosen, rejected = (a, b) if side == "A" else (b, a)

        def key_of(parts: list[dict[str, Any]]) -> list[Any]:
            return [p.get("text") if p["type"] == "text" else media_key(p["image_url"]["url"]) for p in parts]

        return RowPair(source_id=rid, prompt=[{"role": "user", "content": prompt}],
                       chosen={"role": "assistant", "content": chosen}, rejected={"role": "assistant", "content": rejected},
                       category=task, subset=subset, stored="a" if side == "A" else "b",
                       key_parts=(task, key_of(prompt), key_of(a), key_of(b), side))
    return row_to_pair


def _task_of(source: Source, task: str | None) -> str:
    if task is not None:
        if task not in MMRB2_TASKS:
            raise InvalidInput(f"unknown MMRB2 task {task!r}", field="task", limit=list(MMRB2_TASKS))
        return task
    if isinstance(source, (str, Path)):
        p = Path(source)
        for name in [p.stem, *(q.name for q in p.parents)]:
            if name in MMRB2_TASKS:
                return name
    raise InvalidInput("cannot tell the MMRB2 task from the source; pass task= (--task)", field="task",
                       limit=list(MMRB2_TASKS))


def _rows(source: Source) -> list[dict[str, Any]]:
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".json":
        data = json.loads(Path(source).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("pairs"), list):
            return [dict(r) for r in data["pairs"]]
    return read_rows(source)


def load_mmrb2(
    source: Source,
    *,
    task: str | None = None,
    media: MediaOptions | None = None,
    order: Order = "as_stored",
    seed: int = 0,
    limit: int | None = None,
) -> list[EvalItem]:
    """MMRB2 (one task's parquet or JSON) -> items; category = the task, subset = the prompt source."""
    t = _task_of(source, task)
    return assemble("mmrb2", source, _mapper(t), media=media, order=order, seed=seed, limit=limit, rows=_rows(source))
